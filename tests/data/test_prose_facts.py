"""`benchmarks/prose_facts.py`: fact-by-fact scoring of prose paragraphs against the world's own state, and
what each kind of fact is worth in chrF (docs/prose.md's tables come from it)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
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


def probe_module(ae_run: Path, name: str, overrides: Iterable[str] = ()) -> tuple:
    """An untrained tiny copying stage-2 module on the prose world, in eval mode, and its data's test windows."""
    from hydra.utils import instantiate

    from storyreason.run import build_module
    from tests.conftest import compose_config

    cfg = compose_config(ae_run, "multimodal", ["data=prose", "data.max_caption_len=auto",
                                                "model/story/caption_memory=pointer", *overrides], run_name=name)
    data = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, data).eval()
    data.setup("test")
    module.precompute_latents("test", data.frames["test"])
    return module, data


@pytest.fixture(scope="module")
def probed(ae_run: Path) -> tuple:
    return probe_module(ae_run, "head_probe")


def test_the_head_probe_splits_the_region_words_by_the_last_caption_and_can_hide_the_cells(probed: tuple) -> None:
    """`--head`: the region words of the target captions, split by whether the last caption holds them; the
    decoder's own probability of each (as `caption_logits` gives it); masking the map cells changes it."""
    import torch

    module, data = probed
    batches = list(data.test_dataloader())
    with_cells = prose_facts.head_on_region_words(module, batches)
    without = prose_facts.head_on_region_words(module, batches, cells=False)

    vocab = module.tokenizer.vocab
    region = torch.tensor([vocab.index(w) for w in prose_facts.REGION_WORDS if w in vocab])
    expected: dict[str, list[float]] = {"in the last caption": [], "not in the last caption": []}
    with torch.no_grad():
        for batch in batches:
            enc = module.encode_context(batch, module.latents(batch, "test")[0])
            target = batch["target_caption"]
            p = module.story.caption_logits(enc, target).exp().gather(-1, target[..., None])[..., 0]
            for t, words, last in zip(target, p, batch["context_captions"][:, -1]):
                for token, value in zip(t.tolist(), words.tolist()):
                    if token in region:
                        expected["in the last caption" if token in last else "not in the last caption"].append(value)
    assert all(expected.values()), {group: len(values) for group, values in expected.items()}  # both groups occur
    for group, values in expected.items():
        assert with_cells[group]["words"] == without[group]["words"] == len(values)
        assert with_cells[group]["decoder p(word)"] == pytest.approx(sum(values) / len(values), rel=1e-4)
        assert all(0 <= with_cells[group][name] <= 1 for name in prose_facts.HEAD_FIGURES)
    assert with_cells["not in the last caption"]["decoder p(word)"] != pytest.approx(
        without["not in the last caption"]["decoder p(word)"], rel=1e-4)


def test_free_running_facts_are_the_models_own_test_paragraphs_with_or_without_the_cells(probed: tuple) -> None:
    """`--free`: a row per test window in the data's order, naming its story and target frame, holding the
    paragraph the module itself writes for it; with the cells hidden its decoder reads the caption alone."""
    import torch

    module, data = probed
    rows = prose_facts.free_running_rows(module, data)
    assert [(s, t) for s, t, _ in rows] == list(zip(data.story_ids("test"), data.target_frames("test").tolist()))
    with torch.no_grad():
        written = [text for batch in data.test_dataloader() for text in module(batch, "test").captions]
    assert [text for _, _, text in rows] == written
    hidden = []
    for batch in data.test_dataloader():  # what the hidden memory positions are: every map cell, no word
        enc = module.encode_context(batch, module.latents(batch, "test")[0])
        shown = enc.memory_pad.clone()
        prose_facts.hide_cells(enc, batch["context_captions"].shape[-1])
        hidden.append((enc.memory_pad & ~shown).sum(dim=1))
    cells = 2 * module.story.latent_shape[1] * module.story.latent_shape[2]
    assert all((h == cells).all() for h in hidden)
    assert len(prose_facts.free_running_rows(module, data, cells=False)) == len(rows)


def test_region_counts_split_each_map_by_whether_an_object_is_drawn() -> None:
    """`--regions`: a head answering every label right is right on every cell; one answering "no object"
    everywhere is right exactly on the empty cells of each map."""
    import torch
    import torch.nn.functional as F

    from storyreason.data.sources.synthetic import NO_OBJECT, REGION_CLASSES

    labels = torch.tensor([[[0, NO_OBJECT, 4, NO_OBJECT], [8, 8, NO_OBJECT, NO_OBJECT]],
                           [[NO_OBJECT] * 4, [3, NO_OBJECT, NO_OBJECT, NO_OBJECT]]])  # (B=2, M=2, 4 cells)
    perfect = prose_facts.region_counts(F.one_hot(labels, REGION_CLASSES).float(), labels)
    assert perfect == {"last context map, object": (2, 2), "last context map, no object": (6, 6),
                       "predicted next map, object": (3, 3), "predicted next map, no object": (5, 5)}
    empty = prose_facts.region_counts(F.one_hot(torch.full_like(labels, NO_OBJECT), REGION_CLASSES).float(), labels)
    assert empty == {"last context map, object": (0, 2), "last context map, no object": (6, 6),
                     "predicted next map, object": (0, 3), "predicted next map, no object": (5, 5)}


def test_the_region_probe_counts_every_test_cell_and_needs_a_region_head(ae_run: Path) -> None:
    module, data = probe_module(ae_run, "region_probe", ["model.loss_weights.region=1"])
    report = prose_facts.region_head_report(module, data)
    labels = [batch["regions"].flatten(2) for batch in data.test_dataloader()]
    drawn = sum(int((b != prose_facts.NO_OBJECT).sum()) for b in labels)
    assert sum(n for key, (_, n) in report.items() if key.endswith(", object")) == drawn > 0
    assert sum(n for _, n in report.values()) == sum(b.numel() for b in labels)
    assert all(0 <= right <= n for right, n in report.values())
    module.story.region_head = None
    with pytest.raises(SystemExit, match="no region head"):
        prose_facts.region_head_report(module, data)
