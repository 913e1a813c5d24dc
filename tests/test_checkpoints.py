"""Stage 2 refuses a missing or incompatible autoencoder checkpoint with a message that says what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storyreason.checkpoints import CheckpointError, find_latest_run, resolve_ae_checkpoint
from storyreason.run import train
from tests.conftest import compose_config

RUN_STAGE1_FIRST = r"Run stage 1 first \(python train\.py stage=pretrain_ae\)"
LATENT_MISMATCH = r"has autoencoder\.latent_dim=64 but this run needs model\.autoencoder\.latent_dim=128"


def test_missing_checkpoint_path_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, "multimodal", ["model.ae_ckpt=/nonexistent/best.ckpt"])
    message = rf"model\.ae_ckpt=/nonexistent/best\.ckpt does not exist\. {RUN_STAGE1_FIRST}"
    with pytest.raises(CheckpointError, match=message):
        train(cfg)


def test_auto_without_a_stage1_run_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, "multimodal")
    assert cfg.model.ae_ckpt == "auto"
    message = rf"model\.ae_ckpt=auto found no autoencoder: .*{RUN_STAGE1_FIRST} or set model\.ae_ckpt=PATH"
    with pytest.raises(CheckpointError, match=message):
        train(cfg)


def test_stage2_checkpoint_as_autoencoder_is_refused(story_run: Path, tmp_path: Path) -> None:
    ckpt = story_run / "checkpoints" / "best.ckpt"
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ckpt}"])
    with pytest.raises(CheckpointError, match=r"is not a stage-1 autoencoder checkpoint \(stage='multimodal'\)"):
        train(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.autoencoder.latent_dim=128", LATENT_MISMATCH),
        ("model.autoencoder.channels=[8,16,32]", r"has autoencoder\.channels=\[8, 16, 16\] but this run needs"),
    ],
)
def test_autoencoder_size_mismatch_is_refused(ae_run: Path, tmp_path: Path, override: str, message: str) -> None:
    ckpt = ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ckpt}", override])
    with pytest.raises(CheckpointError, match=message):
        train(cfg)


def test_a_stage1_run_directory_means_its_best_checkpoint(ae_run: Path) -> None:
    run = ae_run / "pretrain_ae" / "run"
    assert resolve_ae_checkpoint(str(run), ae_run) == run / "checkpoints" / "best.ckpt"
    assert resolve_ae_checkpoint("auto", ae_run) == run / "checkpoints" / "best.ckpt"


def fake_run(root: Path, stage: str, name: str, finished: bool = True, mtime: float = 1e9) -> Path:
    """A run directory with what `find_latest_run` reads: .hydra/config.yaml, best.ckpt and metrics.json."""
    run = root / stage / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"stage:\n  name: {stage}\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    if finished:
        (run / "metrics.json").write_text("{}")
        os.utime(run / "metrics.json", (mtime, mtime))
    return run


def test_auto_takes_the_newest_finished_stage1_run(tmp_path: Path) -> None:
    fake_run(tmp_path, "pretrain_ae", "old", mtime=1e9)
    newest = fake_run(tmp_path, "pretrain_ae", "new", mtime=2e9)
    fake_run(tmp_path, "pretrain_ae", "unfinished", finished=False)
    fake_run(tmp_path, "multimodal", "later_stage2", mtime=3e9)
    assert find_latest_run(tmp_path, "pretrain_ae") == newest
