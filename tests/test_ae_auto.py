"""`model.ae_ckpt=auto` picks a real stage-1 run: never a sweep job or a debug/limited run finished
after it, one choice for every job of a stage-2 sweep, and the log names the run with its test L1."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from storyreason.checkpoints import SWEEP_AE_CHOICE, resolve_ae_checkpoint
from storyreason.errors import CheckpointError
from storyreason.rundir import RunDir
from tests.commands import output, train_py


def fake_ae_run(root: Path, name: str, mtime: float, trainer: dict | None = None, debug: str | None = None,
                mode: str = "RUN", l1: float = 0.02) -> Path:
    """A finished stage-1 run as train.py leaves it: .hydra/config.yaml (+ hydra.yaml), best.ckpt, metrics.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {"stage": {"name": "pretrain_ae"}, "trainer": {"limit_train_batches": 1.0, "max_steps": -1,
                                                             "fast_dev_run": False, **(trainer or {})}}
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    hydra = {"hydra": {"mode": mode, "runtime": {"choices": {"debug": debug, "stage": "pretrain_ae"}}}}
    OmegaConf.save(OmegaConf.create(hydra), run / ".hydra" / "hydra.yaml")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    (run / "metrics.json").write_text(json.dumps({"test/l1": l1}))
    os.utime(run / "metrics.json", (mtime, mtime))
    return run


@pytest.mark.parametrize(
    "newer, reason",
    [
        ({"trainer": {"limit_test_batches": 2}}, "trainer.limit_test_batches=2"),
        ({"trainer": {"limit_val_batches": 0.25}}, "trainer.limit_val_batches=0.25"),
        ({"trainer": {"limit_train_batches": 3}}, "trainer.limit_train_batches=3"),
        ({"trainer": {"fast_dev_run": True}}, "trainer.fast_dev_run=True"),
        ({"trainer": {"overfit_batches": 2}}, "trainer.overfit_batches=2"),
        ({"trainer": {"max_steps": 10}}, "trainer.max_steps=10"),
        ({"debug": "overfit"}, "debug=overfit"),
    ],
)
def test_auto_passes_over_a_newer_debug_or_limited_run(tmp_path: Path, newer: dict, reason: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    full = fake_ae_run(tmp_path, "pretrain_ae/full", 1e9, l1=0.0216)
    quick = fake_ae_run(tmp_path, "pretrain_ae/quick", 2e9, **newer)
    assert RunDir(quick).limits() == [reason] and RunDir(full).limits() == []
    with caplog.at_level(logging.INFO, logger="storyreason.checkpoints"):
        assert resolve_ae_checkpoint("auto", tmp_path) == full / "checkpoints" / "best.ckpt"
    assert f"model.ae_ckpt=auto: {full} (test/l1 0.0216); passed over 1 newer" in caplog.text


def test_auto_passes_over_newer_sweep_jobs(tmp_path: Path) -> None:
    full = fake_ae_run(tmp_path, "pretrain_ae/full", 1e9)
    job = fake_ae_run(tmp_path, "elsewhere/3", 2e9, mode="MULTIRUN")  # a sweep with its own hydra.sweep.dir
    under_multirun = tmp_path / "multirun" / "pretrain_ae" / "t" / "0"
    shutil.copytree(full, under_multirun)
    (under_multirun / ".hydra" / "hydra.yaml").unlink()  # an older run without Hydra's record: its place says it
    os.utime(under_multirun / "metrics.json", (3e9, 3e9))
    assert RunDir(job).sweep_job and RunDir(under_multirun).sweep_job and not RunDir(full).sweep_job
    assert resolve_ae_checkpoint("auto", tmp_path) == full / "checkpoints" / "best.ckpt"


def test_a_recipe_fraction_of_train_batches_is_a_full_run(tmp_path: Path) -> None:
    """experiment=demo trains stage 1 on half an epoch (limit_train_batches=0.5): that is its real autoencoder."""
    fake_ae_run(tmp_path, "pretrain_ae/older", 1e9)
    demo = fake_ae_run(tmp_path, "pretrain_ae/demo", 2e9, trainer={"limit_train_batches": 0.5})
    assert resolve_ae_checkpoint("auto", tmp_path) == demo / "checkpoints" / "best.ckpt"


def test_only_quick_runs_is_a_one_line_error_naming_why(tmp_path: Path) -> None:
    quick = fake_ae_run(tmp_path, "pretrain_ae/quick", 2e9, trainer={"limit_test_batches": 1})
    with pytest.raises(CheckpointError, match=rf"all sweep jobs or debug/limited runs \(the newest, {quick}: "
                                              r"trainer\.limit_test_batches=1\)"):
        resolve_ae_checkpoint("auto", tmp_path)


def test_a_sweep_job_takes_the_choice_made_when_its_sweep_started(tmp_path: Path) -> None:
    chosen = fake_ae_run(tmp_path, "pretrain_ae/chosen", 1e9)
    sweep = tmp_path / "multirun" / "multimodal" / "t"
    sweep.mkdir(parents=True)
    (sweep / SWEEP_AE_CHOICE).write_text(f"{chosen / 'checkpoints' / 'best.ckpt'}\n")
    fake_ae_run(tmp_path, "pretrain_ae/finished_mid_sweep", 2e9)
    assert resolve_ae_checkpoint("auto", tmp_path, sweep) == chosen / "checkpoints" / "best.ckpt"


def test_a_stage2_sweep_resolves_auto_once_and_logs_it_first(ae_run: Path, tmp_path: Path) -> None:
    """A real 2-job sweep with model.ae_ckpt=auto, a newer limited stage-1 run beside the real one."""
    full = tmp_path / "pretrain_ae" / "full"
    shutil.copytree(ae_run / "pretrain_ae" / "run", full)
    limited = tmp_path / "pretrain_ae" / "limited"
    shutil.copytree(full, limited)
    config = OmegaConf.load(limited / ".hydra" / "config.yaml")
    config.trainer.limit_test_batches = 1
    OmegaConf.save(config, limited / ".hydra" / "config.yaml")
    (limited / "metrics.json").touch()
    sweep = tmp_path / "sweep"
    result = train_py(tmp_path, "-m", "model.lr=0.002,0.003", f"hydra.sweep.dir={sweep}", stage="multimodal")
    assert result.returncode == 0, output(result)[-3000:]
    best = full / "checkpoints" / "best.ckpt"
    assert Path((sweep / SWEEP_AE_CHOICE).read_text().strip()) == best.resolve()
    l1 = json.loads((full / "metrics.json").read_text())["test/l1"]
    said = f"model.ae_ckpt=auto: {full} (test/l1 {l1:.4f})"
    assert f"{said}; passed over 1 newer" in output(result)  # the sweep's choice, before its first job
    for job in ("0", "1"):
        ckpt = torch.load(sweep / job / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
        assert Path(ckpt["hyper_parameters"]["ae_ckpt"]).resolve() == best.resolve()
        first = "\n".join((sweep / job / "train.log").read_text().splitlines()[:3])
        assert f"{said}, chosen once for this sweep" in first, first
