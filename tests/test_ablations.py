"""`make ablations` end to end on tiny data: the table's rows and cells come from the runs' metrics.json."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from storyreason.ablations import ROWS, split_overrides, stage1_row
from tests.commands import output, run_command
from tests.conftest import TINY, TINY_STORY

ROW_NAMES = [path.stem for path in (Path(__file__).resolve().parents[1] / "conf" / "ablation").glob("*.yaml")]


def cells(table: str, row: str) -> list[str]:
    """The cells of the markdown row whose first cell is `row`."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def ablated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two rows (ours, mlp_head) and one seed on tiny data: the sweep directory and the written table."""
    root = tmp_path_factory.mktemp("ablations")
    out = root / "ablations.md"
    result = run_command([sys.executable, "-m", "storyreason.ablations", "--rows", "ours,mlp_head", "--seeds", "3",
                          "--out", str(out), f"paths.root={root}", *TINY,
                          *(f"multimodal:{o}" for o in [*TINY_STORY, "trainer.limit_train_batches=2"])], timeout=600)
    assert result.returncode == 0, output(result)[-3000:]
    (sweep,) = (root / "ablations").iterdir()
    return sweep, out.read_text()


def test_one_stage1_run_per_autoencoder_and_one_stage2_run_per_row(ablated: tuple[Path, str]) -> None:
    sweep, _ = ablated
    assert sorted(p.name for p in (sweep / "pretrain_ae").glob("*-seed*")) == ["ours-seed3"]
    assert sorted(p.name for p in (sweep / "multimodal").glob("*-seed*")) == ["mlp_head-seed3", "ours-seed3"]
    config = OmegaConf.load(sweep / "multimodal" / "mlp_head-seed3" / ".hydra" / "config.yaml")
    assert config.model.story.latent_head._target_ == "storyreason.models.story.MLPLatentHead"
    assert config.model.ae_ckpt == f"{sweep}/pretrain_ae/ours-seed3"


def test_table_cells_are_the_runs_metrics(ablated: tuple[Path, str]) -> None:
    sweep, table = ablated
    header = cells(table, "row")
    for row in ("ours", "mlp_head"):
        metrics = json.loads((sweep / "multimodal" / f"{row}-seed3" / "metrics.json").read_text())
        row_cells = dict(zip(header, cells(table, row)))
        assert row_cells["seeds"] == "1"
        assert row_cells["token acc (free) ↑"] == f"{statistics.fmean([metrics['test/gen_token_acc']]):.4f} ± -"
        assert row_cells["image L1 ↓"].startswith(f"{metrics['test/image_l1']:.4f} ")
        copy, ceiling = metrics["test/baseline/copy_last_frame/image_l1"], metrics["test/ae_ceiling/image_l1"]
        skill = (copy - metrics["test/image_l1"]) / (copy - ceiling)
        # two steps of a tiny autoencoder may reconstruct worse than copying: then the skill is n/a
        expected = f"{skill:.4f} " if ceiling < copy else "n/a"
        assert row_cells["image skill ↑"].startswith(expected)
    ours = json.loads((sweep / "multimodal" / "ours-seed3" / "metrics.json").read_text())
    baseline = dict(zip(header, cells(table, "*copy_last_caption*")))
    assert baseline["token acc (free) ↑"] == f"{ours['test/baseline/copy_last_caption/gen_token_acc']:.4f} ± -"
    assert "make ablations ARGS='--rows ours,mlp_head" in table and "cores" in table
    assert "stage 2: 1 epoch(s) of 2 train batches" in table
    ae = json.loads((sweep / "pretrain_ae" / "ours-seed3" / "metrics.json").read_text())
    assert cells(table, "ours")[0] == "ours" and f"| ours | 1 | {ae['test/l1']:.4f} ± - |" in table


def test_every_row_is_a_config_and_names_a_stage1_row_that_owns_its_autoencoder() -> None:
    assert sorted(ROWS) == sorted(ROW_NAMES)
    for row in ROWS:
        assert stage1_row(stage1_row(row)) == stage1_row(row)


def test_stage_prefixed_overrides_go_to_that_stage_after_the_budget() -> None:
    stages = split_overrides(["trainer=gpu", "multimodal:trainer.max_epochs=8"])
    assert stages["pretrain_ae"][-1] == "trainer=gpu" and "trainer.max_epochs=8" not in stages["pretrain_ae"]
    assert stages["multimodal"][-2:] == ["trainer=gpu", "trainer.max_epochs=8"]
