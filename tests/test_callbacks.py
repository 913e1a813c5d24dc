"""A run whose validation loss climbs far above its best without a NaN says so, in the log and metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from storyreason.callbacks import DivergenceMonitor
from storyreason.errors import ConfigError
from storyreason.run import train
from tests.conftest import compose_config, read_metrics

QUIET = ["logger=null", "~callbacks.samples", "~callbacks.lr_monitor"]


def test_a_diverging_run_says_so_in_the_log_and_in_metrics_json(ae_run: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An absurd learning rate that the warmup reaches after the first epoch: the validation loss climbs and
    stays far above its first value."""
    ae_ckpt = ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ae_ckpt}", "model.lr=1.0",
                                                  "trainer.max_epochs=4", *QUIET])
    with caplog.at_level(logging.WARNING, logger="storyreason.callbacks"):
        train(cfg)
    metrics = read_metrics(cfg)
    assert metrics["diverged"] is True
    best, current, epoch = (metrics[f"divergence/{k}"] for k in ("best", "current", "epoch"))
    assert current > 1.5 * best and epoch >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "diverged" in r.getMessage()]
    assert len(warnings) == 1, "one warning, when it is first seen"
    assert f"val/loss diverged: {current:.4g} at epoch {epoch:.0f}" in warnings[0].getMessage()
    assert f"its best {best:.4g}" in warnings[0].getMessage()


def test_a_healthy_run_has_not_diverged(story_run: Path) -> None:
    assert json.loads((story_run / "metrics.json").read_text())["diverged"] is False


def test_a_factor_of_one_or_less_and_no_patience_are_refused() -> None:
    with pytest.raises(ConfigError, match="callbacks.divergence.factor must be > 1"):
        DivergenceMonitor(factor=1.0)
    with pytest.raises(ConfigError, match="callbacks.divergence.patience must be >= 1"):
        DivergenceMonitor(patience=0)
