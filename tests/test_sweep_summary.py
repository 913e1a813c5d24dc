"""The sweep summary a person reads: a column per searched parameter, floats to 3 significant digits
(the CSV keeps every digit), and the best rows printed when the sweep ends."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from storyreason.sweeps import write_summary
from tests.commands import output, train_py

SEARCH = {"model.lr": "tag(log, interval(3e-4, 1e-2))", "model.mse_weight": "interval(0.0, 2.0)",
          "model.warmup_steps": "choice(0, 50, 200)"}


def optuna_trial(sweep: Path, name: str, params: dict[str, str], value: float) -> None:
    """A finished trial's directory as an Optuna sweep leaves it (hydra.yaml holds the search space)."""
    saved = sweep / name / ".hydra"
    saved.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["stage=pretrain_ae", *(f"{k}={v}" for k, v in params.items())]),
                   saved / "overrides.yaml")
    config = {"stage": {"name": "pretrain_ae", "monitor": "val/l1", "mode": "min"}, "optimized_metric": "val/l1"}
    OmegaConf.save(OmegaConf.create(config), saved / "config.yaml")
    hydra = {"hydra": {"mode": "MULTIRUN", "sweeper": {"direction": "minimize", "params": SEARCH}}}
    OmegaConf.save(OmegaConf.create(hydra), saved / "hydra.yaml")
    (sweep / name / "metrics.json").write_text(json.dumps({"val/l1": value, "test/l1": value * 1.01}))


def md_rows(sweep: Path) -> list[dict[str, str]]:
    """sweep_summary.md's table as one dict per row."""
    lines = [line for line in (sweep / "sweep_summary.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_every_searched_parameter_is_a_column_rounded_to_three_digits(tmp_path: Path) -> None:
    # warmup_steps took one value in both trials: the reduced overrides would hide it, the columns do not
    optuna_trial(tmp_path, "0", {"model.lr": "0.0012345678901", "model.mse_weight": "1.98765432",
                                 "model.warmup_steps": "50"}, 0.031234567)
    optuna_trial(tmp_path, "1", {"model.lr": "0.00456789", "model.mse_weight": "0.123456789",
                                 "model.warmup_steps": "50"}, 0.0298765)
    write_summary(tmp_path)
    best, second = md_rows(tmp_path)
    assert [best["job"], second["job"]] == ["1", "0"]
    assert {k: best[k] for k in SEARCH} == {"model.lr": "0.00457", "model.mse_weight": "0.123", "model.warmup_steps": "50"}
    assert {k: second[k] for k in SEARCH} == {"model.lr": "0.00123", "model.mse_weight": "1.99", "model.warmup_steps": "50"}
    assert (best["val/l1"], best["test/l1"]) == ("0.0299", "0.0302")
    with open(tmp_path / "sweep_summary.csv", newline="") as f:
        full = list(csv.DictReader(f))
    assert full[1]["model.lr"] == "0.0012345678901" and float(full[1]["val/l1"]) == 0.031234567


def test_a_grid_sweep_shows_what_it_varied(tmp_path: Path) -> None:
    from tests.test_sweeps import fake_job

    fake_job(tmp_path, "0", ["seed=1", "model.lr=0.1", "data.batch_size=32"], {"val/loss": 2.0})
    fake_job(tmp_path, "1", ["seed=1", "model.lr=0.0123456", "data.batch_size=64"], {"val/loss": 1.0})
    write_summary(tmp_path)
    rows = md_rows(tmp_path)
    assert [(r["model.lr"], r["data.batch_size"]) for r in rows] == [("0.0123", "64"), ("0.1", "32")]
    assert "seed" not in rows[0]  # shared by every job: nothing to compare


def significant_digits(cell: str) -> int:
    return len(re.sub(r"^0\.0*|\.|e[-+]\d+$", "", cell.lstrip("-")).rstrip("0") or "0")


def test_a_real_optuna_sweep_prints_its_best_rows(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = train_py(tmp_path, "-m", "hparams_search=optuna_ae", "hydra.sweeper.n_trials=2",
                      f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, output(result)[-3000:]
    rows = md_rows(sweep)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    for row in rows:
        assert row["model.warmup_steps"] in ("0", "50", "200")
        for key in ("model.lr", "model.mse_weight", "val/l1", "test/l1"):
            assert significant_digits(row[key]) <= 3, (key, row[key])
    printed = result.stdout[result.stdout.index(f"Sweep {sweep}: all 2 jobs, by val/l1"):]
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| rank | job | status | model.lr | model.mse_weight | model.warmup_steps | val/l1 |")
    assert table[1].startswith(f"| 1 | {rows[0]['job']} | done | {rows[0]['model.lr']} |")
