"""Lightning DDP on CPU: two processes (gloo) write one run directory and match one process's metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hydra.utils import instantiate

from storyreason.data.cache import is_cached
from storyreason.distributed import prepare_data_once
from storyreason.run import train
from tests.commands import metrics, output, train_py
from tests.conftest import compose_config, read_metrics
from tests.test_sweeps import summary_rows

# the continuous metrics; a caption metric can move by one token when float sums are ordered differently
CONTINUOUS = ("loss", "l1", "mse", "psnr", "ssim", "perplexity")


def test_two_processes_write_one_run_directory_with_the_metrics_of_one(ae_run: Path, tmp_path: Path) -> None:
    """Two ranks at batch 8 take the steps of one process at batch 16; validation and test metrics are
    synced across the ranks, so they match the single process's."""
    ae_ckpt = ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"
    single = compose_config(tmp_path / "single", "multimodal", [f"model.ae_ckpt={ae_ckpt}"])
    train(single)

    root = tmp_path / "ddp"
    result = train_py(root, "trainer=ddp", "trainer.devices=2", "data.batch_size=8", f"model.ae_ckpt={ae_ckpt}",
                      stage="multimodal")
    assert result.returncode == 0, output(result)[-3000:]
    runs = list((root / "multimodal").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran in rank 0's directory
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1

    expected, got = read_metrics(single), metrics(run)
    assert got.keys() == expected.keys()
    compared = [k for k in expected if any(k.endswith(name) or f"/{name}_" in k for name in CONTINUOUS)]
    assert len(compared) > 20
    for key in compared:
        assert got[key] == pytest.approx(expected[key], rel=1e-2), key


def test_sweep_of_ddp_jobs_gives_each_job_one_directory(tmp_path: Path) -> None:
    """In a sweep, the ranks Lightning starts run the job, not the sweep, in the job's directory (stage 1,
    one batch of each split per job: what is checked is where the processes go, not what they learn)."""
    sweep = tmp_path / "sweep"
    result = train_py(tmp_path, "-m", "trainer=ddp", "trainer.devices=2", "data.batch_size=8", "model.lr=0.002,0.001",
                      "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                      f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, output(result)[-3000:]
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")) == ["0", "1"]
    assert all((sweep / job / "train_ddp_process_1.log").is_file() for job in ("0", "1"))
    assert not list(tmp_path.glob("pretrain_ae")), "a rank ran outside the sweep"
    rows = sorted(summary_rows(sweep), key=lambda r: r["job"])
    assert [(r["status"], r["overrides"]) for r in rows] == [("done", "model.lr=0.002"), ("done", "model.lr=0.001")]


def test_other_ranks_wait_for_rank_0_to_build_the_data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = instantiate(compose_config(tmp_path, "pretrain_ae").data, _convert_="all")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(TimeoutError, match="rank 0"):
        prepare_data_once(datamodule, poll_s=0.01, timeout_s=0.05)

    import storyreason.distributed

    answers: list[bool] = []
    waiting = threading.Event()

    def asked(*args) -> bool:  # rank 1's look at the cache; rank 0 starts building once it has found none
        answers.append(is_cached(*args))
        waiting.set()
        return answers[-1]

    def rank_0() -> None:
        waiting.wait(timeout=60)
        datamodule.prepare_data()

    monkeypatch.setattr(storyreason.distributed, "is_cached", asked)
    builder = threading.Thread(target=rank_0)
    builder.start()
    prepare_data_once(datamodule, poll_s=0.01)
    builder.join()
    assert answers[0] is False and answers[-1] is True, "rank 1 did not wait for rank 0's build"
    assert is_cached(datamodule.source, datamodule.cache_dir)
