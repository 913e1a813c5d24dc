"""The learning-rate schedule both stages share: linear warmup, then cosine decay to min_lr_ratio * lr, per step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config


class LearningRates(L.Callback):
    """The learning rate each training step uses (read before the step's optimizer step)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_then_cosine_to_the_floor(tmp_path: Path) -> None:
    lr, warmup, floor = 0.01, 3, 0.1
    cfg = compose_config(tmp_path, "pretrain_ae", ["trainer.max_epochs=2", "trainer.limit_train_batches=1.0",
                                                   f"model.lr={lr}", f"model.warmup_steps={warmup}",
                                                   f"model.min_lr_ratio={floor}", "model.scheduler=cosine"])
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.model, _convert_="all")
    rates = LearningRates()
    trainer = instantiate(cfg.trainer, callbacks=[rates], logger=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    total = 2 * math.ceil(24 * 6 / 16)  # 2 epochs of 144 train frames (24 stories of 6) in batches of 16
    expected = [lr * (s + 1) / warmup if s < warmup else
                lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
                for s in range(total)]
    assert len(rates.rates) == total
    assert rates.rates == pytest.approx(expected, rel=1e-9)

