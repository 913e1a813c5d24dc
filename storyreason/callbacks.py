"""Lightning callbacks: sample grids and captions for TensorBoard and the run's samples/ folder; a
watch on validation for a run that diverges without a NaN."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from storyreason.errors import ConfigError

log = logging.getLogger(__name__)


class SampleLogger(L.Callback):
    """Each validation epoch: an image grid (one row per sample) and caption text in TensorBoard.
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
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if batch is None or logger is None:
            return
        rows, lines = pl_module.samples(batch, "val")
        logger.experiment.add_image("val/samples", self._grid(rows), trainer.global_step)
        if lines:
            text = "\n\n".join(line.replace("\n", "  \n") for line in lines)
            logger.experiment.add_text("val/captions", text, trainer.global_step)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
