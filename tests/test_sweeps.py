"""Sweeps through train.py -m: a directory per job, a summary sorted by the optimized metric, a failing
job recorded while the others run (jobs started by submitit), an Optuna search (jobs run by Hydra's
basic launcher), and the SLURM launcher config."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from storyreason.sweeps import record_job, write_summary
from tests.commands import metrics, output, train_py
from tests.conftest import CONF


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep_with_bad_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-job sweep over model.lr whose second job (lr=-1) fails, each job a process that submitit
    starts (hydra/launcher=submitit_local); the sweep directory."""
    root = tmp_path_factory.mktemp("sweep")
    result = train_py(root, "-m", "model.lr=0.002,-1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                      f"hydra.sweep.dir={root / 'sweep'}")
    assert result.returncode == 0, output(result)[-3000:]
    return root / "sweep"


def test_multirun_through_submitit_writes_a_directory_per_job_and_a_summary_of_both(sweep_with_bad_job: Path) -> None:
    assert (sweep_with_bad_job / ".submitit").is_dir()
    jobs = sorted(d.name for d in sweep_with_bad_job.iterdir() if (d / ".hydra").is_dir())
    assert jobs == ["0", "1"]
    rows = summary_rows(sweep_with_bad_job)
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["overrides"] for r in rows] == ["model.lr=0.002", "model.lr=-1"]
    markdown = (sweep_with_bad_job / "sweep_summary.md").read_text()
    assert "| rank | job | status | model.lr | val/l1 |" in markdown
    assert "| 1 | 0 | done | 0.002 |" in markdown and "| 2 | 1 | failed | -1 | - |" in markdown


def test_a_failing_job_is_recorded_and_the_other_finishes(sweep_with_bad_job: Path) -> None:
    done, failed = summary_rows(sweep_with_bad_job)
    assert done["status"] == "done" and failed["status"] == "failed"
    job = sweep_with_bad_job / done["job"]
    assert (job / "checkpoints" / "best.ckpt").is_file()
    assert float(done["val/l1"]) == pytest.approx(metrics(job)["val/l1"])
    assert "model.lr=-1" in failed["error"] and "expected a number > 0" in failed["error"]
    bad = sweep_with_bad_job / failed["job"]
    assert not (bad / "metrics.json").exists()
    assert json.loads((bad / "job.json").read_text())["status"] == "failed"
    assert "Traceback" in (bad / "error.txt").read_text()


def fake_job(sweep: Path, name: str, overrides: list[str], found: dict[str, float] | None, mode: str = "min") -> None:
    """A job directory as a finished (or, without metrics, killed) job leaves it."""
    saved = sweep / name / ".hydra"
    saved.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), saved / "overrides.yaml")
    config = {"stage": {"name": "multimodal", "monitor": "val/loss", "mode": mode},
              "optimized_metric": "${stage.monitor}"}
    OmegaConf.save(OmegaConf.create(config), saved / "config.yaml")
    if found is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(found))


@pytest.mark.parametrize("mode, order", [("min", ["1", "0", "2"]), ("max", ["0", "1", "2"])])
def test_summary_is_sorted_by_the_optimized_metric(tmp_path: Path, mode: str, order: list[str]) -> None:
    fake_job(tmp_path, "0", ["seed=1", "model.lr=0.1"], {"val/loss": 2.0, "test/bleu": 0.1}, mode)
    fake_job(tmp_path, "1", ["seed=1", "model.lr=0.01"], {"val/loss": 1.0, "test/bleu": 0.2}, mode)
    fake_job(tmp_path, "2", ["seed=1", "model.lr=1.0"], None, mode)
    rows = write_summary(tmp_path)
    assert [r["job"] for r in rows] == order
    assert rows[-1]["status"] == "unfinished"
    assert all(r["overrides"].startswith("model.lr=") for r in rows)  # the shared seed=1 is left out
    assert [r["job"] for r in summary_rows(tmp_path)] == order


def test_outside_a_sweep_an_error_still_ends_the_run() -> None:
    def fails(cfg: object) -> float:
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        record_job(fails, OmegaConf.create({}))


def test_optuna_search_runs_two_trials(ae_run: Path, tmp_path: Path) -> None:
    ae_ckpt = ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"
    sweep = tmp_path / "sweep"
    result = train_py(tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"model.ae_ckpt={ae_ckpt}",
                      f"hydra.sweep.dir={sweep}", stage="multimodal")
    assert result.returncode == 0, output(result)[-3000:]
    rows = summary_rows(sweep)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    assert all("model.lr=" in r["overrides"] and "model.loss_weights.ce=" in r["overrides"] for r in rows)
    values = [float(r["val/image_l1"]) for r in rows]
    assert values == sorted(values)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(values[0])


def test_slurm_launcher_config_makes_one_task_per_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra/launcher=submitit_slurm composes with trainer=ddp into an sbatch script of nodes x devices tasks."""
    import shutil

    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    GlobalHydra.instance().clear()
    overrides = ["stage=multimodal", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4",
                 "trainer.num_nodes=2", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                 f"hydra.sweep.dir={tmp_path}"]
    with warnings.catch_warnings(), initialize_config_dir(config_dir=CONF, version_base="1.3"):
        warnings.simplefilter("ignore")  # Hydra notes that the file shadows the plugin's config of that name
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    # what the launcher hands to submitit, as in its launch(); sbatch is not needed to write the script
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a: f"/usr/bin/{name}" if name == "srun" else which(name, *a))
    executor = submitit.AutoExecutor(folder=tmp_path / ".submitit", cluster="slurm")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python train.py", "0")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=240"):
        assert f"#SBATCH {line}" in script


@pytest.mark.parametrize("stage, search", [("pretrain_ae", "optuna_ae"), ("multimodal", "optuna")])
def test_each_training_stage_has_a_search_space_over_its_own_keys(stage: str, search: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from storyreason.sweeps import check_search_space
    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"stage={stage}", f"hparams_search={search}"],
                      return_hydra_config=True)
    check_search_space(cfg)
    assert len(cfg.hydra.sweeper.params) >= 3


def test_a_search_space_of_another_stage_is_one_line_exit_2(tmp_path: Path) -> None:
    from tests.commands import output, train_py

    result = train_py(tmp_path, "-m", "hparams_search=optuna", stage="pretrain_ae")
    assert result.returncode == 2, output(result)
    assert "hparams_search=optuna: model.story.fusion_dim is not a key of stage=pretrain_ae" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("*.ckpt"))
