"""Exact resume: the directory a resumed run writes to, the config it continues with, RNG states in
checkpoints, checkpoint files that a kill never leaves half-written, and a clean stop on a signal.

`python train.py stage=multimodal resume=RUN_DIR` (or `resume=latest`) continues RUN_DIR from its
checkpoints/last.ckpt. Hydra's run directory is RUN_DIR itself (the `run_dir` resolver in
conf/hydra/default.yaml), so logs, TensorBoard events and checkpoints go on in the same place; the
config is the one the run started with; Lightning restores the model, optimizer, scheduler, loops
and callbacks, `RngState` the random number generators, and the datamodule its place in the epoch.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from storyreason.checkpoints import CheckpointError, run_stage
from storyreason.config import leaves

log = logging.getLogger(__name__)

LAST = "last.ckpt"
_ABSENT = object()


def run_is_finished(run_dir: Path) -> bool:
    """A run is finished once it wrote metrics.json (after its final evaluation)."""
    return (run_dir / "metrics.json").is_file()


# what a run directory holds before its first training step; anything else means it did some work
_BEFORE_FIRST_STEP = (".hydra", "train.log", "skipped_stories.json", "tokenizer.json", "tensorboard/hparams.yaml")


def discard_unstarted_run(cfg: DictConfig) -> bool:
    """Remove the run directory of a run that failed before doing anything (a config, checkpoint or data
    error, a crash before the first step), so it is not left with only .hydra/ and train.log.

    Never a resumed run (its directory is older than this command), a sweep job (its directory
    records the failure for the sweep summary), or one that holds anything else: checkpoints,
    TensorBoard events, metrics, predictions. Rank 0 only. True when the directory was removed.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN or rank_zero_only.rank != 0:
        return False
    if cfg.get("resume") not in (None, ""):
        return False
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not run_dir.is_dir():
        return False
    files = [f.relative_to(run_dir).as_posix() for f in run_dir.rglob("*") if not f.is_dir()]
    if any(not any(f == k or f.startswith(k + "/") for k in _BEFORE_FIRST_STEP) for f in files):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent  # <root>/<stage>/ when this was its only run
    if parent != Path(cfg.paths.root) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return True


def find_unfinished_run(root: str | Path, stage: str) -> Path:
    """The run of `stage` under `root` whose last.ckpt is newest among those without metrics.json."""
    runs = [
        ckpt.parents[1]
        for ckpt in Path(root).glob(f"**/checkpoints/{LAST}")
        if not run_is_finished(ckpt.parents[1]) and run_stage(ckpt.parents[1]) == stage
    ]
    if not runs:
        raise CheckpointError(
            f"resume=latest found no unfinished {stage} run under {root} (a run directory with "
            f"checkpoints/{LAST} and no metrics.json); give resume=RUN_DIR, or paths.root=... if it lives elsewhere"
        )
    return max(runs, key=lambda run: (run / "checkpoints" / LAST).stat().st_mtime)


def resume_dir(resume: str, root: str | Path, stage: str) -> Path:
    """The absolute run directory `resume=` names: a directory, or `latest` (see find_unfinished_run)."""
    if str(resume) == "latest":
        return find_unfinished_run(root, stage).resolve()
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"resume={resume}: no such run directory")
    if not (path / "checkpoints" / LAST).is_file():
        raise CheckpointError(
            f"resume={resume} has no checkpoints/{LAST}: it stopped before its first checkpoint, start it again"
        )
    return path.resolve()


def _run_dir(resume: str | None, root: str, stage: str, timestamp: str) -> str:
    """Resolver `run_dir`: a new `<root>/<stage>/<timestamp>` directory, or the run `resume` names.

    A `resume` naming no resumable run gets a new directory too: `resume_run` then stops with a
    one-line error, where an error raised here would surface as a Hydra traceback.
    """
    if resume not in (None, ""):
        try:
            return str(resume_dir(resume, root, stage))
        except CheckpointError:
            pass
    return f"{root}/{stage}/{timestamp}"


def _hydra_subdir(resume: str | None, timestamp: str) -> str:
    """Resolver `hydra_subdir`: where Hydra saves the job's config. A resumed run saves its own under
    .hydra/resumed/<timestamp>, so .hydra/config.yaml stays the config the run started with."""
    return ".hydra" if resume in (None, "") else f".hydra/resumed/{timestamp}"


# Registered on import: train.py imports this before @hydra.main composes the config, and a
# submitit job process imports it when it unpickles the task (storyreason.run imports this module).
OmegaConf.register_new_resolver("run_dir", _run_dir, use_cache=True, replace=True)
OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir, use_cache=True, replace=True)


def _overridden_keys() -> set[str]:
    """Config keys this command line overrides (`model.lr=...`, `+x=...`, `~x`, a group as `trainer=ddp`)."""
    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key.split("@", 1)[1] if "@" in key else key.replace("/", "."))
    return keys - {"resume"}


def _remove(cfg: DictConfig, key: str) -> None:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is not None and leaf in node:
        del node[leaf]


def continued_config(saved: DictConfig, current: DictConfig, overridden: set[str]) -> DictConfig:
    """The config a resumed run continues with: the run's own (`saved`), with the values of the keys
    this command line overrides taken from `current`, and keys the config files added since."""
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    old = leaves(OmegaConf.to_container(saved, resolve=False))
    new = leaves(OmegaConf.to_container(current, resolve=False))
    kept = []
    for key in sorted(old.keys() | new.keys()):
        before, now = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if key == "resume" or before == now:
            continue
        by_command_line = any(key == o or key.startswith(o + ".") for o in overridden)
        if not (by_command_line or before is _ABSENT):
            kept.append(key)
            continue
        if by_command_line:
            log.warning("resume: %s=%s from the command line replaces the run's %s; the result may differ from "
                        "an uninterrupted run", key, "<removed>" if now is _ABSENT else now,
                        "<unset>" if before is _ABSENT else before)
        if now is _ABSENT:
            _remove(merged, key)
        else:
            OmegaConf.update(merged, key, now, merge=False, force_add=True)
    if kept:
        log.info("resume: the run's own values of %d keys the config files now set differently (%s)",
                 len(kept), ", ".join(kept))
    return merged


def _purge_tensorboard_after(cfg: DictConfig, step: int) -> None:
    """TensorBoard loggers of the resumed run drop what the interrupted run logged at `step` and later
    (it got there again from the checkpoint), so each step shows once."""
    for logger in (cfg.get("logger") or {}).values():
        if str(logger.get("_target_", "")).endswith("TensorBoardLogger"):
            logger.purge_step = step


def _global_step(path: Path) -> int:
    """The training step a checkpoint was written at (read without loading its tensors)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except (pickle.UnpicklingError, RuntimeError, OSError, KeyError) as err:
        raise CheckpointError(f"{path} is unreadable or not a Lightning checkpoint: {err}") from None


def resume_run(cfg: DictConfig) -> tuple[DictConfig, Path | None]:
    """For `resume=...`: the run's own config (see continued_config) and its last.ckpt; else `cfg, None`."""
    if cfg.get("resume") in (None, ""):
        return cfg, None
    run_dir = Path(cfg.paths.output_dir).resolve()
    wanted = resume_dir(cfg.resume, cfg.paths.root, cfg.stage.name)
    if wanted != run_dir:
        raise CheckpointError(
            f"resume={cfg.resume} continues {wanted} in that directory, but this job writes to {run_dir}: "
            "resume one run at a time, not inside a sweep (-m)"
        )
    if run_is_finished(run_dir):
        raise CheckpointError(
            f"resume={cfg.resume}: {run_dir} already finished (it has metrics.json); "
            f"evaluate it with stage=evaluate ckpt_path={run_dir}"
        )
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"resume={cfg.resume}: {run_dir} has no .hydra/config.yaml, so it is no storyreason run")
    saved = OmegaConf.load(saved_path)
    overridden = _overridden_keys()
    stage = OmegaConf.select(saved, "stage.name")
    if "stage" in overridden and stage != cfg.stage.name:
        raise CheckpointError(f"resume={cfg.resume}: {run_dir} is a {stage} run, not stage={cfg.stage.name}")
    merged = continued_config(saved, cfg, overridden)
    merged.resume = str(run_dir)
    last = run_dir / "checkpoints" / LAST
    _purge_tensorboard_after(merged, _global_step(last))
    for stale in (run_dir / "checkpoints").glob(".*.tmp-*"):  # a save the kill interrupted
        stale.unlink(missing_ok=True)
    log.info("resuming %s from %s", run_dir, last)
    return merged, last


def resume_command(stage: str, run_dir: str | Path) -> str:
    """The command line that continues a run."""
    return f"python train.py stage={stage} resume={shlex.quote(str(run_dir))}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, syncs it to disk and renames it into place, so a
    kill at any moment leaves the previous complete file. (Lightning's own save stages the file in the
    system temp directory and moves it, which is a copy, not a rename, when that is another filesystem.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _rng_states() -> dict[str, Any]:
    """Every global RNG state as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RngState(L.Callback):
    """Puts the global RNG states (torch, CUDA, NumPy, Python) in every checkpoint and sets them back
    when training resumes, so the resumed run draws what the uninterrupted one would have drawn.
    Under DDP the checkpoint holds rank 0's states, which every rank gets back."""

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return _rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:
            _set_rng_states(self._restored)
            self._restored = None


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
        self.run_dir, self.stage, self.every_n_train_steps = Path(run_dir), stage, every_n_train_steps
        self.signum: int | None = None
        self._stopping = False
        self._previous: dict[int, Any] = {}

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

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
        if signalled or (n and trainer.global_step % n == 0):
            trainer.save_checkpoint(self.last, weights_only=False)
        self._stopping = signalled

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._stopping:  # stopped here rather than at the end of the saved step, so its metrics are logged
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._signalled(trainer):
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
        print(f"\nInterrupted: {saved} {self.last}\nResume with:\n  {resume_command(self.stage, self.run_dir)}\n",
              file=sys.stderr, flush=True)
