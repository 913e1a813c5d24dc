"""Lightning callbacks and plugins: sample grids and captions for TensorBoard, W&B or MLflow and the run's
samples/ folder; checkpoints that a kill never leaves half-written; last.ckpt kept current, and a clean stop
on Ctrl-C or SIGTERM (storyreason/resume.py continues such a run); a watch on validation for a run that
diverges without a NaN; the console's progress bars and model summary."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
from torchvision.utils import make_grid, save_image

from storyreason.errors import ConfigError
from storyreason.rundir import RunDir

log = logging.getLogger(__name__)


class SampleLogger(L.Callback):
    """Each validation epoch: an image grid (one row per sample) and caption text in TensorBoard, W&B or MLflow.
    At test end: the same for the test split, written as PNG grids and a text file under `samples/`.

    The samples are the first `num_samples` items of the split, so epochs are comparable.
    """

    def __init__(self, num_samples: int = 8, num_grids: int = 2, out_dir: str = "samples") -> None:
        self.num_samples, self.num_grids, self.out_dir = num_samples, num_grids, out_dir

    def _batch(self, trainer: L.Trainer, split: str, start: int) -> dict[str, torch.Tensor] | None:
        dataset = trainer.datamodule.datasets[split]
        if start >= len(dataset):
            return None
        batch = dataset.__getitems__(list(range(start, min(start + self.num_samples, len(dataset)))))
        return {k: v.to(trainer.lightning_module.device) for k, v in batch.items()}

    @staticmethod
    def _grid(rows: list[torch.Tensor]) -> torch.Tensor:
        return make_grid(torch.cat(rows), nrow=len(rows[0]), padding=2, pad_value=1.0)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        batch = self._batch(trainer, "val", 0)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger, MLFlowLogger))]
        if batch is None or not loggers:
            return
        rows, lines = pl_module.samples(batch, "val")
        grid = self._grid(rows)
        for logger in loggers:
            log_samples(logger, grid, lines, trainer.global_step)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:  # debug=fdr saves nothing, like Lightning's own loggers and checkpoints
            return
        out = Path(trainer.default_root_dir) / self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        all_lines = []
        for g in range(self.num_grids):
            batch = self._batch(trainer, "test", g * self.num_samples)
            if batch is None:
                break
            rows, lines = pl_module.samples(batch, "test")
            save_image(self._grid(rows), out / f"test_grid_{g}.png")
            all_lines += lines
        if all_lines:
            (out / "test_captions.txt").write_text("\n\n".join(all_lines) + "\n")


def log_samples(logger: Logger, grid: torch.Tensor, lines: list[str], step: int) -> None:
    """A validation sample grid `(3, H, W)` in [0, 1] and its caption lines, in the form each logger keeps
    images and text: TensorBoard's image and text tabs, a W&B image and table, MLflow artifacts."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image("val/samples", grid, step)
        if lines:
            logger.experiment.add_text("val/captions", "\n\n".join(line.replace("\n", "  \n") for line in lines), step)
    elif isinstance(logger, WandbLogger):
        logger.log_image("val/samples", [grid], step=step)
        if lines:
            logger.log_text("val/captions", columns=["sample"], data=[[line] for line in lines], step=step)
    elif isinstance(logger, MLFlowLogger):
        image = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        logger.experiment.log_image(logger.run_id, image, f"val/samples/step_{step:07d}.png")
        if lines:
            logger.experiment.log_text(logger.run_id, "\n\n".join(lines) + "\n", f"val/captions/step_{step:07d}.txt")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, syncs it to disk and renames it into place, so a
    kill at any moment leaves the previous complete file. (Lightning's own save stages the file in the
    system temp directory and moves it, which is a copy, not a rename, when that is another filesystem.)"""

    PARTIAL = ".tmp-"  # `.<name>.tmp-<pid>`: a save in progress, or one a kill interrupted

    @classmethod
    def discard_partial(cls, folder: Path) -> None:
        """Remove the temporary files of saves a kill interrupted."""
        for stale in folder.glob(f".*{cls.PARTIAL}*"):
            stale.unlink(missing_ok=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{self.PARTIAL}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class RunInterrupted(SystemExit):
    """Training stopped on a signal after saving last.ckpt; the exit status is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class LastCheckpoint(L.Callback):
    """Keeps checkpoints/last.ckpt of the run current between the epoch-end saves of ModelCheckpoint:
    every `every_n_train_steps` training steps, so a killed run loses at most that many, and when
    Ctrl-C (SIGINT) or SIGTERM arrives: it finishes the current step, saves, prints the command that
    resumes the run and exits with 128 + the signal number. A second signal stops at once.

    It saves only where Lightning resumes exactly: after a training step inside an epoch (the last
    step of an epoch goes on to validation, and ModelCheckpoint saves after that), or, for a signal
    in an epoch's last step or its validation, at the end of the epoch. While training runs its
    handlers replace Lightning's SIGTERM handler, so a signal never cuts a validation pass in half;
    under DDP the ranks agree to stop after the same step.
    """

    def __init__(self, run_dir: str, stage: str, every_n_train_steps: int = 100) -> None:
        self.run_dir, self.stage, self.every_n_train_steps = RunDir(run_dir), stage, every_n_train_steps
        self.signum: int | None = None
        self._stopping = False
        self._previous: dict[int, Any] = {}

    @property
    def last(self) -> Path:
        return self.run_dir.last

    @property
    def resume_command(self) -> str:
        """The command line that continues the run."""
        return f"python train.py stage={self.stage} resume={shlex.quote(str(self.run_dir.path))}"

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self._restore_handlers()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this training step, then saving {self.last} "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signum, self._stopping = None, False
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _signalled(self, trainer: L.Trainer) -> bool:
        """Whether any rank got a signal (a collective under DDP: every rank asks at the same points)."""
        return trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False)

    def _stop(self, trainer: L.Trainer) -> None:
        name = signal.Signals(self.signum or signal.SIGTERM).name
        log.warning("%s: stopped at epoch %d, step %d; %s holds it", name, trainer.current_epoch,
                    trainer.global_step, self.last)
        raise RunInterrupted(self.signum or signal.SIGTERM)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        signalled = self._signalled(trainer)
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        n = self.every_n_train_steps
        if (signalled or (n and trainer.global_step % n == 0)) and not trainer.fast_dev_run:
            trainer.save_checkpoint(self.last, weights_only=False)
        self._stopping = signalled

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._stopping:  # stopped here rather than at the end of the saved step, so its metrics are logged
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._signalled(trainer):
            if not trainer.fast_dev_run:
                trainer.save_checkpoint(self.last, weights_only=False)
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if not isinstance(exception, (RunInterrupted, KeyboardInterrupt)) or not trainer.is_global_zero:
            return
        if not self.last.is_file():
            print("\nInterrupted before the first checkpoint: start the run again.", file=sys.stderr, flush=True)
            return
        saved = "saved" if isinstance(exception, RunInterrupted) else "the newest checkpoint is"
        print(f"\nInterrupted: {saved} {self.last}\nResume with:\n  {self.resume_command}\n",
              file=sys.stderr, flush=True)
class DivergenceMonitor(L.Callback):
    """Flags a run whose validation `monitor` (lower is better, positive: a loss) stays above `factor` x its
    best for `patience` validations in a row, or turns non-finite: a divergence that is no NaN in the
    training loss, after which a run would otherwise end as a success.

    The first time, a WARNING names the metric, its best, the current value and the epoch; `summary()`
    gives metrics.json `diverged` and those figures; with `stop` the fit also ends there (the best
    checkpoint is kept either way). Only fitting counts, not the final evaluation of the best weights, and
    the state is in every checkpoint, so a resumed run remembers its best.
    """

    def __init__(self, monitor: str = "val/loss", factor: float = 1.5, patience: int = 2, stop: bool = False) -> None:
        if not factor > 1:
            raise ConfigError(f"callbacks.divergence.factor must be > 1, got {factor}")
        if patience < 1:
            raise ConfigError(f"callbacks.divergence.patience must be >= 1, got {patience}")
        self.monitor, self.factor, self.patience, self.stop = monitor, factor, patience, stop
        self.best, self.best_epoch, self.above = math.inf, -1, 0
        self.diverged: dict[str, float] | None = None  # best, current, epoch when it was first flagged

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or trainer.state.fn != "fit" or value is None:
            return
        current, epoch = float(value), trainer.current_epoch
        if current < self.best:
            self.best, self.best_epoch, self.above = current, epoch, 0
            return
        self.above = self.above + 1 if not math.isfinite(current) or current > self.factor * self.best else 0
        if self.above >= self.patience and self.diverged is None:
            self.diverged = {"best": self.best, "current": current, "epoch": epoch}
            if trainer.is_global_zero:
                log.warning("%s diverged: %.4g at epoch %d, above %g x its best %.4g (epoch %d) for %d validations",
                            self.monitor, current, epoch, self.factor, self.best, self.best_epoch, self.above)
            trainer.should_stop = trainer.should_stop or self.stop

    def summary(self) -> dict[str, float | bool]:
        """`diverged`, and when it did: the best and current value and the epoch it was flagged at."""
        if self.diverged is None:
            return {"diverged": False}
        return {"diverged": True, **{f"divergence/{k}": float(v) for k, v in self.diverged.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "above": self.above, "diverged": self.diverged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]
        self.above, self.diverged = state_dict["above"], state_dict["diverged"]


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, written to stderr (Lightning writes them to stdout), so that
    `python train.py ... > results.txt` captures the result tables alone."""

    def init_sanity_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):  # the bar takes `file=sys.stdout` as it is created
            return super().init_sanity_tqdm()

    def init_train_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_test_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()

    def init_predict_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()


class ModelSummary(LightningModelSummary):
    """Lightning's model summary without its FLOPs column and total when it counted none: it counts them
    only for a module with an `example_input_array`, and ours have none, so every row would read 0."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        if total_flops:
            LightningModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                            total_training_modes, total_flops, **summarize_kwargs)
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        log.info("\n%s", table.rpartition("\n")[0])  # its last line is the "0 Total Flops"
