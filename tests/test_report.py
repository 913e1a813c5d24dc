"""The model-vs-baselines table: one column per predictor the metrics hold, and the model's skills."""

from __future__ import annotations

import pytest

from storyreason.report import results_table, skills

# a model half-way from copying the last frame to the oracle, a quarter of the way to the AE's ceiling
METRICS = {
    "test/image_l1": 0.06, "test/baseline/copy_last_frame/image_l1": 0.08, "test/ae_ceiling/image_l1": 0.0,
    "test/baseline/oracle_frame/image_l1": 0.04, "test/gen_token_acc": 0.9,
    "test/baseline/copy_last_caption/gen_token_acc": 0.8, "test/baseline/oracle_caption/gen_token_acc": 1.0,
}


def test_skill_is_the_share_of_the_gap_from_copying_to_the_ceiling_the_model_closes() -> None:
    assert skills(METRICS) == pytest.approx({"image skill vs ae_ceiling": 0.25, "image skill vs oracle_frame": 0.5,
                                             "caption skill vs oracle_caption": 0.5})
    header, rows = results_table(METRICS)
    assert header == ["metric", "model", "copy_last_frame", "copy_last_caption", "ae_ceiling", "oracle_frame",
                      "oracle_caption"]
    assert ["image skill vs oracle_frame ↑", "0.5000", "-", "-", "-", "-", "-"] in rows


def test_without_oracles_there_is_no_oracle_column_nor_skill() -> None:
    """Sources other than the built-in world have no oracle: their table simply lacks it."""
    metrics = {k: v for k, v in METRICS.items() if "oracle" not in k}
    assert list(skills(metrics)) == ["image skill vs ae_ceiling"]
    header, rows = results_table(metrics)
    assert not [h for h in header if "oracle" in h] and not [r for r in rows if "oracle" in r[0]]


def test_the_printed_table_keeps_every_figure_whole_when_stdout_is_no_terminal(capsys: pytest.CaptureFixture) -> None:
    """Piped into a log, the table has no terminal width to fit: every header and figure is printed whole."""
    from storyreason.report import print_table

    print_table(METRICS | {"test/baseline/mean_context/image_l1": 0.1})
    out = capsys.readouterr().out
    assert "…" not in out
    for text in ("copy last caption", "oracle caption", "0.0600", "0.9000", "image skill vs oracle_frame"):
        assert text in out, text
