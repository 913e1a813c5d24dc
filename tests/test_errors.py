"""Wrong input fails fast through train.py: exit code 2, one line naming the key on stderr, nothing trusted left."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from tests.commands import REPO, output, run_command, train_py
from tests.conftest import TINY, compose_config


def trusted_files(root: Path) -> list[Path]:
    """Files a later run would pick up: checkpoints, finished-run metrics, cache entries."""
    found = [*root.glob("**/*.ckpt"), *root.glob("**/metrics.json")]
    cache = root / "cache"
    return found + ([p for p in cache.iterdir() if not p.name.startswith(".")] if cache.is_dir() else [])


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report an error (`ConfigError: ...`, `[time][storyreason][ERROR] - ...`)."""
    return [line for line in stderr.splitlines() if re.match(r"^(\[.*\]\[ERROR\] - )?\w+Error: ", line)]


def assert_one_line_error(result, needle: str) -> None:
    """Exit code 2, no traceback, and one error line on stderr that says `needle`."""
    assert result.returncode == 2, output(result)[-3000:]
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and needle in errors[0], result.stderr[-3000:]
    assert needle not in result.stdout, "an error went to stdout"


# name: (stage, overrides, what the line must say); unknown group options: tests/test_config.py
CONFIG_MISTAKES = {
    "context below 1": ("pretrain_ae", ["data.context=0"], "data.context=0"),
    "context longer than every story": ("multimodal", ["data.context=6"], "data.context=6"),
    "image size the strides cannot take": ("pretrain_ae", ["data.image_size=60"], "data.image_size=60"),
    "learning rate zero": ("pretrain_ae", ["model.lr=0"], "model.lr=0"),
    "batch size zero": ("pretrain_ae", ["data.batch_size=0"], "data.batch_size=0"),
    "all loss weights zero": ("multimodal", ["model.loss_weights={ce:0,img:0,lat:0}"], "all zero"),
    "missing autoencoder": ("multimodal", ["model.ae_ckpt=/nonexistent/ae.ckpt"], "model.ae_ckpt"),
    "missing data folder": ("pretrain_ae", ["data=folder", "data.path=/nonexistent/stories"],
                            "DataError: data.path /nonexistent/stories does not exist"),
}


# the cases train.py itself runs (a subprocess each): the exit code, stderr and the removed run directory;
# the others are checked in this process, where train.py's wiring is the same
THROUGH_TRAIN_PY = ("learning rate zero", "missing data folder")


def refused_in_process(root: Path, stage: str, overrides: list[str]) -> Exception:
    """Composing and running the config as train.py does: the error train.py reports in one line (`user_error`)."""
    from storyreason.errors import user_error
    from storyreason.run import run

    with pytest.raises(Exception) as raised:
        run(compose_config(root, stage, overrides))
    ours = user_error(raised.value)
    assert ours is not None, f"train.py would show a traceback for {raised.value!r}"
    return ours


@pytest.mark.parametrize("case", list(CONFIG_MISTAKES), ids=list(CONFIG_MISTAKES))
def test_config_mistake_fails_with_one_line(tmp_path: Path, case: str) -> None:
    stage, overrides, needle = CONFIG_MISTAKES[case]
    if case in THROUGH_TRAIN_PY:
        result = train_py(tmp_path, *overrides, stage=stage, tiny=not any(o.startswith("data=") for o in overrides))
        assert_one_line_error(result, needle)
        assert not list(tmp_path.rglob("train.log")), "a run directory was left behind"
    else:
        error = refused_in_process(tmp_path, stage, overrides)
        assert needle in f"{type(error).__name__}: {error}" and "\n" not in str(error), error
    assert trusted_files(tmp_path) == []


def test_stage2_checkpoint_as_autoencoder_is_refused(tmp_path: Path, story_run: Path) -> None:
    ckpt = story_run / "checkpoints" / "best.ckpt"
    error = refused_in_process(tmp_path, "multimodal", [f"model.ae_ckpt={ckpt}"])
    assert "not a stage-1 autoencoder checkpoint" in str(error)
    assert trusted_files(tmp_path) == []


def test_latent_size_mismatch_is_refused(tmp_path: Path, ae_run: Path) -> None:
    error = refused_in_process(tmp_path, "multimodal", [f"model.ae_ckpt={ae_run}/pretrain_ae/run",
                                                        "model.autoencoder.latent_dim=128"])
    assert "latent_dim" in str(error)
    assert trusted_files(tmp_path) == []


# two stage-1 epochs of 9 steps, last.ckpt every 4 steps; a NaN weight at the start of step 12, after the
# save at step 12 and the best checkpoint of epoch 1 (step 9)
POISONED = ["trainer.max_epochs=2", "trainer.limit_train_batches=1.0", "callbacks.last_checkpoint.every_n_train_steps=4",
            "+callbacks.poison._target_=tests.signals.PoisonAtStep", "+callbacks.poison.step=12"]
NON_FINITE = r"NonFiniteLossError: non-finite loss at training step 12 \(term l1=nan, mse=nan\)"


def check_good_checkpoints_kept(run: Path) -> None:
    """No metrics.json; last.ckpt is the save at step 12 and best.ckpt epoch 1's, both with finite weights."""
    assert not (run / "metrics.json").exists()
    for name, step in (("last.ckpt", 12), ("best.ckpt", 9)):
        ckpt = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == step, name
        floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
        assert floats and all(torch.isfinite(v).all() for v in floats), f"{name} holds non-finite weights"


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    from storyreason.modules.base import NonFiniteLossError
    from storyreason.run import train

    cfg = compose_config(tmp_path, "pretrain_ae", POISONED)
    with pytest.raises(NonFiniteLossError, match=NON_FINITE.removeprefix("NonFiniteLossError: ")):
        train(cfg)
    check_good_checkpoints_kept(Path(cfg.paths.output_dir))


def test_non_finite_loss_through_train_py_exits_2_with_one_line_on_stderr_and_in_train_log(tmp_path: Path) -> None:
    result = train_py(tmp_path, *POISONED)
    assert_one_line_error(result, "NonFiniteLossError: ")
    assert re.search(NON_FINITE, result.stderr), result.stderr[-3000:]
    (run,) = (tmp_path / "pretrain_ae").iterdir()
    assert re.search(NON_FINITE, (run / "train.log").read_text()), "the error is not in the run's train.log"
    check_good_checkpoints_kept(run)


def unsafe_checkpoint(path: Path) -> Path:
    """A checkpoint-shaped file that only arbitrary unpickling can load (it holds a functools.partial)."""
    import functools

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"stage": "multimodal", "hook": functools.partial(print)}, "state_dict": {},
                "global_step": 3}, path)
    return path


@pytest.mark.parametrize("given", ["model.ae_ckpt", "ckpt_path evaluate", "ckpt_path predict", "resume"])
def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path: Path, given: str) -> None:
    """model.ae_ckpt=, ckpt_path= (evaluate, predict) and resume= all load with weights_only=True and name the file."""
    root = tmp_path / "runs"
    if given == "resume":  # a run directory whose last.ckpt is unsafe
        run = root / "pretrain_ae" / "unsafe_run"
        unsafe = unsafe_checkpoint(run / "checkpoints" / "last.ckpt")
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("stage:\n  name: pretrain_ae\n")
        result = train_py(root, f"resume={run}", tiny=False)  # through train.py: exit 2, one line on stderr
        assert_one_line_error(result, "CheckpointError: ")
        (line,) = error_lines(result.stderr)
    elif given == "model.ae_ckpt":
        unsafe = unsafe_checkpoint(tmp_path / "unsafe.ckpt")
        error = refused_in_process(root, "multimodal", [f"model.ae_ckpt={unsafe}"])
        line = f"{type(error).__name__}: {error}"
    else:
        unsafe, stage = unsafe_checkpoint(tmp_path / "unsafe.ckpt"), given.split()[1]
        story = [f"predict.input={tmp_path}"] if stage == "predict" else []
        error = refused_in_process(root, stage, [f"ckpt_path={unsafe}", *story])
        line = f"{type(error).__name__}: {error}"
    assert "CheckpointError: " in line and str(unsafe) in line, line
    assert "refusing to load" in line or "not a Lightning checkpoint" in line, line
    assert [p.name for p in root.rglob("*.ckpt")] == (["last.ckpt"] if given == "resume" else [])
    assert not list(root.rglob("metrics.json"))


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
    code = RAISING_STEP.format(error=error)
    result = run_command([sys.executable, "-c", code, str(REPO / "train.py"), f"paths.root={tmp_path}", *TINY])
    assert f"{error}: inside the training step" in result.stderr
    if error == "DataError":
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "training_step" in result.stderr
