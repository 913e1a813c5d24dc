"""Exact resume: a run killed mid-epoch, or stopped by SIGTERM or Ctrl-C, goes on from its last.ckpt in
its own directory and ends with the metrics of a run that was never interrupted."""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from storyreason.callbacks import AtomicCheckpointIO, RunInterrupted
from storyreason.checkpoints import CheckpointError
from storyreason.data.samplers import EpochSampler
from storyreason.resume import continued_config, resume_run
from storyreason.rundir import RunDir, latest_unfinished_run
from storyreason.run import train
from tests.commands import metrics, output, run_command, train_py
from tests.conftest import CONF, compose_config, scalars

# 144 train frames at batch 16: 9 steps a whole epoch (stage 1 trains on half an epoch by default);
# last.ckpt at steps 4, 8 | 12, 16 and after each epoch
TWO_EPOCHS = ["trainer.max_epochs=2", "trainer.limit_train_batches=1.0", "callbacks.last_checkpoint.every_n_train_steps=4"]


def signal_at(step: int, signum: str, marker: Path) -> list[str]:
    """Overrides that send `signum` to the run at the end of training step `step` (once)."""
    name = f"+callbacks.{signum.lower()}"
    return [f"{name}._target_=tests.signals.SignalAtStep", f"{name}.step={step}", f"{name}.signum={signum}",
            f"{name}.marker={marker}"]


def the_run(root: Path) -> Path:
    """The one run directory of stage 1 under `root`."""
    runs = list((root / "pretrain_ae").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch stage-1 run that nothing stopped (in this process: it repeats train.py's run bit for bit)."""
    cfg = compose_config(tmp_path_factory.mktemp("uninterrupted"), "pretrain_ae", TWO_EPOCHS)
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_ctrl_c_then_a_kill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path
) -> None:
    signals = [*signal_at(5, "SIGINT", tmp_path / "sigint"), *signal_at(14, "SIGKILL", tmp_path / "sigkill")]

    # Ctrl-C in step 6: the step is finished and saved, and the command that resumes is printed
    stopped = train_py(tmp_path, *TWO_EPOCHS, *signals)
    assert stopped.returncode == 128 + signal.SIGINT, output(stopped)[-3000:]
    run = the_run(tmp_path)
    assert last_step(run) == 6
    assert RunDir(run).log.is_file() and RunDir(run).overrides.is_file()  # what Hydra keeps of a run
    assert not (run / "metrics.json").exists() and "Traceback" not in stopped.stderr
    command = re.search(r"Resume with:\n\s+(.+)\n", stopped.stderr)
    assert command, stopped.stderr[-2000:]
    args = shlex.split(command.group(1))
    assert args == ["python", "train.py", "stage=pretrain_ae", f"resume={run}"]
    first_config = (run / ".hydra" / "config.yaml").read_text()

    # the printed command goes on from step 6 until SIGKILL in step 15 (no chance to save)
    killed = run_command([sys.executable, *args[1:]])
    assert killed.returncode == -signal.SIGKILL, output(killed)[-3000:]
    assert last_step(run) == 12  # the newest periodic save, 3 steps into the second epoch

    # resume=latest finds the run; it ends with the metrics and the TensorBoard curve of one uninterrupted run.
    # A key given again replaces the run's value with a warning, on stderr and in train.log
    resumed = train_py(tmp_path, "resume=latest", "callbacks.progress_bar.refresh_rate=5", tiny=False)
    assert resumed.returncode == 0, output(resumed)[-3000:]
    warning = ("resume: callbacks.progress_bar.refresh_rate=5 from the command line replaces the run's 0; "
               "the result may differ from an uninterrupted run")
    assert warning in resumed.stderr and warning in (run / "train.log").read_text(), resumed.stderr[-3000:]
    assert the_run(tmp_path) == run
    assert metrics(run) == metrics(uninterrupted)
    assert scalars(run, "train/loss_step") == scalars(uninterrupted, "train/loss_step")
    assert (run / ".hydra" / "config.yaml").read_text() == first_config
    assert len(list((run / ".hydra" / "resumed").glob("*/config.yaml"))) == 2


def test_sigterm_finishes_the_step_saves_and_prints_the_resume_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_config(tmp_path, "pretrain_ae", [*TWO_EPOCHS, *signal_at(10, "SIGTERM", tmp_path / "sent")])
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg)
    assert stopped.value.code == 128 + signal.SIGTERM
    run = Path(cfg.paths.output_dir)
    assert last_step(run) == 11 and not (run / "metrics.json").exists()
    assert f"python train.py stage=pretrain_ae resume={run}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back


def test_a_run_stopped_in_an_epochs_last_step_resumes_from_the_epoch_end_last_ckpt(
    uninterrupted: Path, tmp_path: Path
) -> None:
    """SIGTERM in the last step of the first epoch: the epoch's validation runs, last.ckpt is saved at the epoch's
    end (step 9, epoch 0 done, before ModelCheckpoint's own epoch-end save), and resuming from it ends with the uninterrupted run's metrics and loss curve."""
    given = [*TWO_EPOCHS, *signal_at(9, "SIGTERM", tmp_path / "sent")]
    with pytest.raises(RunInterrupted):
        train(compose_config(tmp_path, "pretrain_ae", given))
    run = the_run(tmp_path)
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (9, 0)
    assert saved["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 9
    assert not (run / "metrics.json").exists()
    train(compose_config(tmp_path, "pretrain_ae", [*given, f"resume={run}"]))
    assert the_run(tmp_path) == run
    assert metrics(run) == metrics(uninterrupted)
    assert scalars(run, "train/loss_step") == scalars(uninterrupted, "train/loss_step")


class ReseedGlobalRngs(L.Callback):
    """Sets the global torch, NumPy and Python RNGs to `seed` when training starts, where a resumed run
    finds them as `seed_everything` and building the model left them, not as the interrupted run had them."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)


def test_training_draws_nothing_from_the_global_rngs_so_checkpoints_need_not_hold_them(
    ae_run: Path, story_run: Path, tmp_path: Path
) -> None:
    """Lightning's checkpoints do not hold the global RNG states. Stage 1 resumes exactly without them
    (the test above); stage 2 trained from other global RNG states ends with the same metrics."""
    reseed = ["+callbacks.reseed._target_=tests.test_resume.ReseedGlobalRngs", "+callbacks.reseed.seed=1234"]
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ae_run / 'pretrain_ae' / 'run'}",
                                                  f"paths.cache={ae_run / 'cache'}", *reseed])
    train(cfg)
    assert metrics(Path(cfg.paths.output_dir)) == metrics(story_run), (
        "training draws from the global RNGs (dropout, random augmentation?): an exact resume now needs their "
        "states in the checkpoints (a callback's state_dict)"
    )


def test_continued_config_keeps_the_runs_values_unless_the_command_line_overrides_them() -> None:
    saved = OmegaConf.create({"model": {"lr": 0.1, "depth": 2}, "trainer": {"max_epochs": 4}, "resume": None})
    now = OmegaConf.create({"model": {"lr": 0.5, "depth": 3, "width": 8}, "trainer": {"max_epochs": 9}, "resume": "x"})
    merged = continued_config(saved, now, overridden={"trainer.max_epochs"})
    assert merged.model == {"lr": 0.1, "depth": 2, "width": 8}  # the run's values; a key added since is taken
    assert merged.trainer.max_epochs == 9


def fake_run(root: Path, name: str, stage: str, finished: bool = False) -> Path:
    run = root / stage / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"stage": {"name": stage}}), run / ".hydra" / "config.yaml")
    if finished:
        (run / "metrics.json").write_text("{}")
    return run


def test_resume_latest_takes_the_newest_unfinished_run_of_the_stage(tmp_path: Path) -> None:
    old = fake_run(tmp_path, "a", "multimodal")
    new = fake_run(tmp_path, "b", "multimodal")
    fake_run(tmp_path, "c", "multimodal", finished=True)
    fake_run(tmp_path, "d", "pretrain_ae")
    os.utime(old / "checkpoints" / "last.ckpt", (1, 1))
    assert latest_unfinished_run(tmp_path, "multimodal") == RunDir(new)
    with pytest.raises(CheckpointError, match="no unfinished"):
        latest_unfinished_run(tmp_path / "multimodal" / "c", "multimodal")


def test_resume_refuses_a_finished_run(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "a", "pretrain_ae", finished=True)
    cfg = OmegaConf.create({"resume": str(run), "paths": {"root": str(tmp_path), "output_dir": str(run)},
                            "stage": {"name": "pretrain_ae"}})
    with pytest.raises(CheckpointError, match="already finished"):
        resume_run(cfg)


def test_hydra_writes_a_resumed_run_into_its_own_directory(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "a", "pretrain_ae")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.root={tmp_path}", "resume=latest"],
                      return_hydra_config=True)
    assert cfg.hydra.run.dir == str(run.resolve())
    assert cfg.hydra.output_subdir.startswith(".hydra/resumed/")  # .hydra/config.yaml stays the run's own


def test_checkpoint_files_are_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def dies_half_way(obj: object, f: object) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_train_order_depends_on_seed_and_epoch_and_skips_what_was_trained() -> None:
    data = range(20)
    order = list(EpochSampler(data, seed=3))
    assert sorted(order) == list(range(20)) and order == list(EpochSampler(data, seed=3))
    next_epoch = EpochSampler(data, seed=3)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != order
    resumed = EpochSampler(data, seed=3)
    resumed.skip = 8
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # skipping applies to one epoch only


def test_ddp_ranks_split_each_single_process_batch() -> None:
    """Rank r's batch j at batch size B/2 is half of the one-process batch j at batch size B."""
    data, b = range(32), 8
    single = list(EpochSampler(data, seed=5))
    ranks = [list(EpochSampler(data, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    for j in range(len(data) // b):
        halves = ranks[0][j * b // 2:(j + 1) * b // 2] + ranks[1][j * b // 2:(j + 1) * b // 2]
        assert sorted(halves) == sorted(single[j * b:(j + 1) * b])


def test_a_run_without_resume_is_left_alone() -> None:
    cfg = OmegaConf.create({"resume": None})
    assert resume_run(cfg) == (cfg, None)
