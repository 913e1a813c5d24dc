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
    found = skills(METRICS)
    assert {label: skill.value for label, skill in found.items()} == pytest.approx(
        {"image skill vs ae_ceiling": 0.25, "image skill vs oracle_frame": 0.5, "caption skill vs oracle_caption": 0.5})
    assert not any(skill.reason for skill in found.values())
    header, rows = results_table(METRICS)
    assert header == ["metric", "model", "copy_last_frame", "copy_last_caption", "ae_ceiling", "oracle_frame",
                      "oracle_caption"]
    assert ["image skill vs oracle_frame ↑", "0.5000", "-", "-", "-", "-", "-"] in rows


def test_a_skill_whose_ceiling_is_no_better_than_the_copy_reads_n_a_with_the_reason() -> None:
    """An untrained autoencoder reconstructs worse than copying the last frame: a model four times worse than
    the copy would score ~1 against it, so that skill is n/a, while the one against the oracle stays."""
    metrics = METRICS | {"test/image_l1": 0.32, "test/ae_ceiling/image_l1": 0.33,
                         "test/baseline/oracle_caption/gen_token_acc": 0.8,
                         "test/chrf": 0.9, "test/baseline/copy_last_caption/chrf": 0.8,
                         "test/baseline/oracle_caption/chrf": 0.95}
    found = skills(metrics)
    assert found["image skill vs ae_ceiling"].reason == "ae_ceiling image L1 0.3300 is no better than copy_last_frame's 0.0800"
    assert found["caption skill vs oracle_caption"].reason.startswith("oracle_caption token acc (free) 0.8000 is no better")
    assert found["image skill vs oracle_frame"].value == pytest.approx(-6.0) and not found["image skill vs oracle_frame"].reason
    assert found["caption chrF skill vs oracle_caption"].value == pytest.approx(2 / 3)
    rows = {row[0]: row[1] for row in results_table(metrics)[1]}
    assert rows["image skill vs ae_ceiling ↑"] == f"n/a ({found['image skill vs ae_ceiling'].reason})"
    assert rows["caption chrF skill vs oracle_caption ↑"] == "0.6667"


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


def test_a_split_with_no_metrics_prints_one_line_not_an_empty_table(capsys: pytest.CaptureFixture) -> None:
    """trainer.limit_test_batches=0 scores nothing on test: the run says so in a line."""
    from storyreason.report import print_table

    print_table({"val/l1": 0.5}, "test", title="multimodal: test split (run)")
    assert capsys.readouterr().out == "multimodal: test split (run): no test metrics\n"
