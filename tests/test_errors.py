"""Wrong input fails fast through train.py: one clear line naming the key, exit code != 0, nothing trusted left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, TINY_STORY, compose_config

REPO = Path(__file__).resolve().parents[1]


def train_py(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run train.py as a user would, with tiny sizes and everything under `root`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, str(REPO / "train.py"), f"paths.root={root}", *TINY, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def trusted_files(root: Path) -> list[Path]:
    """Files a later run would pick up: checkpoints, finished-run metrics, cache entries."""
    found = [*root.glob("**/*.ckpt"), *root.glob("**/metrics.json")]
    cache = root / "cache"
    return found + ([p for p in cache.iterdir() if not p.name.startswith(".")] if cache.is_dir() else [])


CONFIG_MISTAKES = {
    "unknown stage": (["stage=foo"], "stage=foo: no such option"),
    "unknown data source": (["data=foo"], "data=foo: no such option"),
    "context below 1": (["data.context=0"], "data.context=0"),
    "context longer than every story": (["stage=multimodal", "data.context=6", *TINY_STORY], "data.context=6"),
    "image size the strides cannot take": (["data.image_size=60"], "data.image_size=60"),
    "learning rate zero": (["model.lr=0"], "model.lr=0"),
    "batch size zero": (["data.batch_size=0"], "data.batch_size=0"),
    "all loss weights zero": (["stage=multimodal", "model.loss_weights={ce:0,img:0,lat:0}", *TINY_STORY], "all zero"),
    "missing autoencoder": (["stage=multimodal", "model.ae_ckpt=/nonexistent/ae.ckpt", *TINY_STORY], "model.ae_ckpt"),
}


@pytest.mark.parametrize("case", list(CONFIG_MISTAKES), ids=list(CONFIG_MISTAKES))
def test_config_mistake_fails_with_one_line(tmp_path: Path, case: str) -> None:
    overrides, needle = CONFIG_MISTAKES[case]
    result = train_py(tmp_path, *overrides)
    assert result.returncode == 2
    assert needle in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert trusted_files(tmp_path) == []
    assert not list(tmp_path.rglob("train.log")), "a run directory was left behind"


def test_stage2_checkpoint_as_autoencoder_is_refused(tmp_path: Path, story_run: Path) -> None:
    ckpt = story_run / "checkpoints" / "best.ckpt"
    result = train_py(tmp_path, "stage=multimodal", f"model.ae_ckpt={ckpt}", *TINY_STORY)
    assert result.returncode != 0
    assert "not a stage-1 autoencoder checkpoint" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert trusted_files(tmp_path) == []


def test_latent_size_mismatch_is_refused(tmp_path: Path, ae_run: Path) -> None:
    result = train_py(tmp_path, "stage=multimodal", f"model.ae_ckpt={ae_run}/pretrain_ae/run",
                      "model.autoencoder.latent_dim=128", *TINY_STORY)
    assert result.returncode != 0
    assert "latent_dim" in result.stdout + result.stderr
    assert trusted_files(tmp_path) == []


def test_non_finite_loss_stops_training_and_keeps_good_checkpoints(tmp_path: Path) -> None:
    from storyreason.modules.base import NonFiniteLossError
    from storyreason.run import train

    cfg = compose_config(tmp_path, "pretrain_ae", ["model.lr=1e30", "model.warmup_steps=0", "trainer.max_epochs=3"])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at training step \d+ \(term "):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    assert not (run / "metrics.json").exists()
    for ckpt in run.glob("checkpoints/*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_non_finite_loss_through_train_py_exits_nonzero_naming_step_and_term(tmp_path: Path) -> None:
    result = train_py(tmp_path, "model.lr=1e30", "model.warmup_steps=0", "trainer.max_epochs=3")
    assert result.returncode != 0
    assert "non-finite loss at training step" in result.stdout + result.stderr
    assert not list(tmp_path.glob("**/metrics.json"))
    for ckpt in tmp_path.glob("**/*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path: Path) -> None:
    import functools

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"hyper_parameters": {"stage": "pretrain_ae", "hook": functools.partial(print)}, "state_dict": {}}, unsafe)
    result = train_py(tmp_path / "runs", "stage=multimodal", f"model.ae_ckpt={unsafe}", *TINY_STORY)
    assert result.returncode != 0
    assert "refusing to load" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert trusted_files(tmp_path / "runs") == []


# train.py run with stage 1's training step replaced by one that raises `error(message)`
RAISING_STEP = """
import runpy, sys
from storyreason.data.errors import DataError
from storyreason.modules.autoencoder import AutoencoderModule

def training_step(self, batch, batch_idx):
    raise {error}("inside the training step")

AutoencoderModule.training_step = training_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("error", ["ValueError", "DataError"])
def test_only_our_errors_are_one_line_a_bug_keeps_its_traceback(tmp_path: Path, error: str) -> None:
    from tests.commands import run_command

    code = RAISING_STEP.format(error=error)
    result = run_command([sys.executable, "-c", code, str(REPO / "train.py"), f"paths.root={tmp_path}", *TINY])
    assert f"{error}: inside the training step" in result.stderr
    if error == "DataError":
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "training_step" in result.stderr
