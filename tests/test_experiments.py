"""The recipes (`experiment=demo`, `experiment=storyreasoning`) compose with their per-stage settings, and
`logger=tensorboard_csv` writes both logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from storyreason.config import check_types
from tests.conftest import CONF, compose_config, scalars


def composed(*overrides: str) -> DictConfig:
    """As `python train.py <overrides>` composes it, without the tests' tiny sizes."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(("stage", "epochs", "batches"), [("pretrain_ae", 1, 0.5), ("multimodal", 2, 0.8)])
def test_experiment_demo_brings_its_stage_recipe(stage: str, epochs: int, batches: float) -> None:
    cfg = composed("experiment=demo", f"stage={stage}")
    check_types(cfg)
    assert cfg.data.source._target_.endswith("SyntheticWorld") and cfg.stage.name == stage
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (epochs, batches)


@pytest.mark.parametrize("stage", ["pretrain_ae", "multimodal"])
def test_experiment_storyreasoning_is_the_dataset_on_a_gpu_with_its_text_settings(stage: str) -> None:
    cfg = composed("experiment=storyreasoning", f"stage={stage}")
    check_types(cfg)
    assert cfg.data.source._target_.endswith("StoryReasoning") and cfg.trainer.accelerator == "gpu"
    assert (cfg.data.vocab_min_count, cfg.data.max_caption_len) == (2, "auto")
    plain = composed("data=storyreasoning", f"stage={stage}")
    assert cfg.trainer.max_epochs != plain.trainer.max_epochs or cfg.model.lr != plain.model.lr, "no stage recipe"


def test_logger_tensorboard_csv_writes_both_logs(ae_run: Path, tmp_path: Path) -> None:
    """The same training steps in TensorBoard's events and in csv/metrics.csv."""
    import csv

    from storyreason.run import train

    cfg = compose_config(tmp_path, "pretrain_ae", ["logger=tensorboard_csv", f"paths.cache={ae_run / 'cache'}",
                                                   "trainer.limit_train_batches=3", "~callbacks.samples"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    with open(run / "csv" / "metrics.csv", newline="") as f:
        logged = [float(row["train/loss_step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]
    assert len(logged) == 3
    assert scalars(run, "train/loss_step") == pytest.approx(logged, rel=1e-6)
