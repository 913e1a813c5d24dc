"""A test helper callback: a real signal to the training process at a chosen step."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L


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
