"""`benchmarks/prose_facts.py`: fact-by-fact scoring of prose paragraphs against the world's own state, and
what each kind of fact is worth in chrF (docs/prose.md's tables come from it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from storyreason.data.sources.synthetic import SyntheticWorld
from storyreason.data.tokenizer import normalize_text
from storyreason.metrics import CharF

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import prose_facts  # noqa: E402

STORIES = 25


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld({"train": 1, "val": 1, "test": STORIES}, captions="prose")


def windows(world: SyntheticWorld, column: int) -> list[tuple[str, int, str]]:
    """(story id, target frame, paragraph) of every test window: column 0 the target's own paragraph, -1 the last one's."""
    rows = []
    for index in range(STORIES):
        story_id, _, captions, _ = world.story(2, index)
        rows += [(story_id, t, normalize_text(captions[t + column])) for t in range(4, len(captions))]
    return rows


def test_the_true_paragraphs_get_every_fact_right_and_the_copy_no_changed_region(world: SyntheticWorld) -> None:
    true, copy = prose_facts.score_facts(world, windows(world, 0)), prose_facts.score_facts(world, windows(world, -1))
    assert set(true) == set(prose_facts.FACTS)  # 25 stories have changed and kept regions, bounces and none
    assert all(right == checked for right, checked in true.values())
    assert copy["region, changed"][0] == 0 and copy["region, same"][0] == copy["region, same"][1]
    assert 0 < copy["bounce, none"][0] < copy["bounce, none"][1]  # the last frame's bounce clause is copied along


def test_each_kind_of_fact_adds_chrf_and_all_of_them_give_the_worlds_oracle(world: SyntheticWorld) -> None:
    scores = prose_facts.worth(world, stories=STORIES)
    values = [scores[level] for level in prose_facts.LEVELS]
    assert values == sorted(values) and len(set(values)) == len(values)
    oracle, references = [], []
    for index in range(STORIES):
        _, _, captions, oracles = world.story(2, index)
        for t in range(4, len(captions)):
            references.append(normalize_text(captions[t]))
            oracle.append(normalize_text(oracles[t][1] if t in oracles else captions[t]))
    metric = CharF()
    metric.update(oracle, references)
    assert scores[prose_facts.LEVELS[-1]] == pytest.approx(float(metric.compute()), abs=1e-6)


def test_the_command_scores_every_column_of_a_captions_file(world: SyntheticWorld, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "captions.tsv"
    lines = ["story_id\ttarget_frame\treference\tcopy_last_caption"]
    lines += [f"{s}\t{t}\t{p}\t{q}" for (s, t, p), (_, _, q) in zip(windows(world, 0), windows(world, -1))]
    path.write_text("\n".join(lines) + "\n")
    GlobalHydra.instance().clear()
    prose_facts.main([str(path)])
    table = capsys.readouterr().out
    assert "| fact | checked | reference | copy_last_caption |" in table
    assert any(line.startswith("| region, changed |") and line.endswith("| 1.000 | 0.000 |") for line in table.splitlines())


def test_the_context_captions_tell_the_next_row_better_than_copying_it() -> None:
    """docs/prose.md: the answer is in the context, so a model can beat copying the region."""
    world = SyntheticWorld({"train": 300, "val": 1, "test": STORIES}, captions="prose")
    fitted, copy = prose_facts.row_from_history(world)
    assert fitted > copy + 0.1, (fitted, copy)
