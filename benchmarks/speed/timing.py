"""How the contestants are timed: side by side with `Trainer.fit`, on the batches it trains on.

On a shared machine the background load swings several-fold within a minute, so nothing is timed in
separate runs: each round is one `Trainer.fit`, and the bare contestants step on the very batches it
trains on, between its steps (half before, half after, order rotated every batch), their seconds taken
out of the fit's. A contestant with a loader of its own (`EpochShare`) steps a share of its epoch per
round, scaled to the whole epoch. Ratios are medians over rounds of ratios within a round.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from storyreason.data.datamodule import StoryDataModule

Batch = dict[str, torch.Tensor]
Step = Callable[[Batch], None]  # one training step of a contestant on a batch


def sync(device: torch.device) -> None:
    """Wait for the device's queue to drain, so that a clock reading covers the work queued before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(out: dict, key: str, device: torch.device) -> Iterator[None]:
    """Store the seconds the block took in out[key] (the device's queue drained at both ends)."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - start


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """What Lightning's bf16-mixed plugin wraps each step in; nothing for full precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device`, as Lightning moves them before a step."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def paired(rounds: list[dict[str, float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator / denominator, both from the same round (the same load)."""
    return statistics.median(r[numerator] / r[denominator] for r in rounds)


class EpochShare:
    """A contestant that trains on batches of its own loader, not the fit's: each call takes the next
    batch of `loader` and runs `step` on it (the fit's batch is ignored), up to `per_round` batches a
    round; the loader goes on where the last round stopped (a new epoch after its end)."""

    def __init__(self, loader: DataLoader, step: Step, per_round: int) -> None:
        self.loader, self.step = loader, step
        self.batches = iter(loader)
        self.limit = max(1, min(len(loader), per_round))
        self.done = 0

    def new_round(self) -> None:
        self.done = 0

    def __call__(self, batch: Batch) -> None:
        if self.done < self.limit:
            own = next(self.batches, None)
            if own is None:
                self.batches = iter(self.loader)
                own = next(self.batches)
            self.step(own)
            self.done += 1

    def epoch_s(self, seconds: float) -> float:
        """`seconds` of this round's batches, scaled to a whole epoch."""
        return seconds * len(self.loader) / max(self.done, 1)


class Shadows(L.Callback):
    """Bare contestants stepped on the very batches the fit trains on, interleaved with its steps.

    On even batches they run before the fit's step, on odd ones after it, in an order rotated every
    batch, so the fit and each contestant meet the same background load on a shared machine. Their
    seconds are kept per contestant and taken out of the fit's: `fit_s` is the fit's epochs alone
    (first epoch start to the end of training: epoch-end hooks and checkpoints included).
    """

    def __init__(self, steps: dict[str, Step], prepare: dict[str, Callable[[], None]],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.steps, self.prepare, self.clock = steps, prepare, clock
        self.seconds = dict.fromkeys(steps, 0.0)
        self.total_s = self.fit_s = self.fit_call_s = 0.0
        self._start = self._before = 0.0
        self._batches = 0

    def _time(self, name: str, fn: Callable, device: torch.device, *args: object) -> None:
        sync(device)
        start = self.clock()
        fn(*args)
        sync(device)
        spent = self.clock() - start
        self.seconds[name] += spent
        self.total_s += spent

    def _step_all(self, batch: Batch, device: torch.device) -> None:
        names = list(self.steps)
        turn = self._batches % len(names)
        for name in names[turn:] + names[:turn]:
            self._time(name, self.steps[name], device, batch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            for name, prepare in self.prepare.items():
                self._time(name, prepare, pl_module.device)
            sync(pl_module.device)
            self._start, self._before = self.clock(), self.total_s

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Batch, batch_idx: int) -> None:
        if self._batches % 2 == 0:
            self._step_all(batch, pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: Batch,
                           batch_idx: int) -> None:
        if self._batches % 2 == 1:
            self._step_all(batch, pl_module.device)
        self._batches += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self.fit_s = self.clock() - self._start - (self.total_s - self._before)


def fit_round(cfg: DictConfig, module: L.LightningModule, dm: StoryDataModule, run_dir: Path, steps: dict[str, Step],
              prepare: dict[str, Callable[[], None]] | None = None) -> Shadows:
    """`Trainer.fit` for `trainer.max_epochs` epochs with the configured callbacks and logger, the bare
    contestants interleaved; returns their timings, with `fit_call_s` the whole call less theirs."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    shadows = Shadows(steps, prepare or {})
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [shadows]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    out: dict[str, float] = {}
    with timed(out, "s", module.device):
        trainer.fit(module, datamodule=dm)
    shadows.fit_call_s = out["s"] - shadows.total_s
    return shadows


def measure_rounds(cfg: DictConfig, module: L.LightningModule, dm: StoryDataModule, run_dir: Path,
                   contestants: dict[str, Step], seed: EpochShare, rounds: int, loader_s: float,
                   before_fit: Callable[[], None] = lambda: None) -> list[dict[str, float]]:
    """`rounds` fits with the bare contestants and the seed style interleaved. Returns, per round, seconds
    per epoch of the fit and of each contestant (a bare loop also pays `loader_s` to fetch its batches;
    the seed style's share of batches is scaled to its epoch)."""
    results = []
    prepare = {name: step.prepare for name, step in contestants.items() if hasattr(step, "prepare")}
    for r in range(rounds):
        before_fit()
        seed.new_round()
        shadows = fit_round(cfg, module, dm, run_dir, {**contestants, "seed_style": seed}, prepare)
        epochs = cfg.trainer.max_epochs
        result = {"fit": shadows.fit_s / epochs, "fit_call_s": shadows.fit_call_s}
        result.update({name: shadows.seconds[name] / epochs + loader_s for name in contestants})
        result["seed_style"] = seed.epoch_s(shadows.seconds["seed_style"])
        results.append(result)
        print(f"  round {r + 1}: seconds per epoch: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()),
              flush=True)
    return results


def run_epochs(step: Step, loader: DataLoader, epochs: int, device: torch.device) -> float:
    """Seconds of `epochs` passes of `step` over `loader` (a bare loop on its own)."""
    out: dict[str, float] = {}
    with timed(out, "s", device):
        for _ in range(epochs):
            for batch in loader:
                step(batch)
    return out["s"]


def warm_up(step: Step, loader: DataLoader) -> None:
    """The first and the last (often smaller) batch once: every batch shape's kernels chosen, untimed."""
    batches = list(loader)
    for batch in {0: batches[0], len(batches) - 1: batches[-1]}.values():
        step(batch)


def loader_epoch_s(dm: StoryDataModule, device: torch.device, passes: int = 3) -> float:
    """Seconds of the fastest of `passes` passes over the train loader, each batch moved to `device`:
    (d), and what a bare loop pays to fetch its batches."""
    seconds = []
    for _ in range(passes):
        out: dict[str, float] = {}
        with timed(out, "s", device):
            for batch in dm.train_dataloader():
                to_device(batch, device)
        seconds.append(out["s"])
    return min(seconds)
