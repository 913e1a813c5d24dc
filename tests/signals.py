"""Test helper callbacks: a real signal to the training process, or a poisoned weight, at a chosen step."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch


class SignalAtStep(L.Callback):
    """Sends `signum` (a name such as SIGKILL) to this process at the end of training step `step`, once:
    `marker` records that it was sent, so the resumed run is not signalled again. Added last
    (`+callbacks.<name>._target_=tests.signals.SignalAtStep`), it runs after the run's own callbacks of that step."""

    def __init__(self, step: int, signum: str, marker: str) -> None:
        self.step, self.signum, self.marker = step, signum, Path(marker)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), getattr(signal, self.signum))


class PoisonAtStep(L.Callback):
    """Fills the module's first parameter with NaN at the start of training step `step`, so that step's
    loss is non-finite after good steps (and checkpoints) before it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
