"""A run whose validation loss climbs far above its best without a NaN says so, in the log and metrics.json."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

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


def watched(values: list[float], factor: float = 1.5, patience: int = 2, stop: bool = False) -> tuple[dict, list[bool]]:
    """`DivergenceMonitor` fed one validation value per epoch while fitting: its summary, and `should_stop` after each."""
    monitor = DivergenceMonitor(factor=factor, patience=patience, stop=stop)
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), is_global_zero=True, should_stop=False)
    stops = []
    for epoch, value in enumerate(values):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/loss": torch.tensor(value)}
        monitor.on_validation_end(trainer, None)
        stops.append(trainer.should_stop)
    return monitor.summary(), stops


def test_a_healthy_run_has_not_diverged() -> None:
    """Noise below factor x the best, and single spikes above it that the next validation ends, are no divergence."""
    assert watched([1.0, 0.8, 1.19, 1.1, 0.9, 1.2, 0.7, 1.0])[0] == {"diverged": False}
    assert watched([1.0, 2.0, 0.9, 5.0, 1.0, math.inf, 0.95])[0] == {"diverged": False}
    assert watched([1.0, 0.8, 2.0, 2.0, 2.0], patience=4)[0] == {"diverged": False}


@pytest.mark.parametrize("stop", [False, True])
def test_patience_validations_above_factor_times_the_best_or_not_finite_are_a_divergence(stop: bool) -> None:
    """Flagged at the `patience`-th validation in a row above factor x the best (non-finite counts as above),
    with the best, the value and the epoch of that moment; later values change nothing; `stop` ends the fit there."""
    summary, stops = watched([1.0, 0.8, 1.3, 1.21, 1.25, 0.5, 9.0], stop=stop)
    assert summary == {"diverged": True, "divergence/best": pytest.approx(0.8), "divergence/current": pytest.approx(1.21),
                       "divergence/epoch": 3.0}
    assert stops == [False, False, False, stop, stop, stop, stop]
    summary, _ = watched([1.0, math.nan, math.nan], factor=4.0)
    assert summary["diverged"] is True and summary["divergence/epoch"] == 2.0 and summary["divergence/best"] == 1.0
    assert watched([1.0, 1.6, 1.7, 1.8], patience=3)[0]["divergence/epoch"] == 3.0


def test_a_factor_of_one_or_less_and_no_patience_are_refused() -> None:
    with pytest.raises(ConfigError, match="callbacks.divergence.factor must be > 1"):
        DivergenceMonitor(factor=1.0)
    with pytest.raises(ConfigError, match="callbacks.divergence.patience must be >= 1"):
        DivergenceMonitor(patience=0)
