"""Prose captions end to end, on StoryReasoning-schema parquet written by the stand-in generator: the default
settings keep references whole and the vocabulary free of punctuation-glued words, and the edge cases of
prose (empty spans, tags only, curly quotes, accents, em-dashes, very long paragraphs, multi-id tags) give
captions and batches, never a crash."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from storyreason.data.datamodule import StoryDataModule
from storyreason.data.tokenizer import EOS_ID, JOINER
import tests.conftest as shared
from tests.conftest import compose_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import standin  # noqa: E402


def prose_data(root: Path, snapshot: Path, overrides: list[str] = ()) -> StoryDataModule:
    """The stage-2 datamodule of `data=storyreasoning` at its defaults on `snapshot`, set up."""
    with pytest.MonkeyPatch.context() as patch:  # the shared tiny overrides size the built-in world, which this lacks
        patch.setattr(shared, "TINY", [o for o in shared.TINY if not o.startswith("data.source.")])
        cfg = compose_config(root, "multimodal", [
            "data=storyreasoning", f"data.path={snapshot}", "data.image_size=32", "data.max_caption_len=auto",
            "data.source.decode_workers=1", f"data.source.hf_cache_dir={root / 'hf'}", *overrides])
    data = instantiate(cfg.data, _convert_="all")
    data.prepare_data()
    data.setup("fit")
    return data


def glued(token: str) -> bool:
    """A word with a punctuation mark stuck to it ("room," or '"Wait'); `Sarah's` and `twenty-one` are words."""
    token = token.strip(JOINER)
    return bool(re.search(r"\w", token)) and bool(re.search(r"[^\w'\-.,]|^[.,'\-]|[.,'\-]$", token))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prose") / "snapshot"
    standin.write_standin(folder, train=40, test=8, seed=3, image_size=(96, 54), workers=1)
    return folder


def test_default_settings_keep_references_whole_and_words_unglued(snapshot: Path, tmp_path: Path) -> None:
    data = prose_data(tmp_path, snapshot)
    stats = data.text_stats
    assert stats["train_truncated_share"] <= 0.01 + 1e-9  # auto: 99% of train captions whole
    assert stats["test_truncated_share"] <= 0.05
    words = data.tokenizer.vocab[4:]
    assert sum(map(glued, words)) <= 0.02 * len(words)
    assert stats["vocab_size"] == len(data.tokenizer) > 500
    whole = data.datasets["test"].lengths <= data.max_caption_len - 1  # room for <eos>
    assert whole.float().mean() >= 0.95
    test = data.splits["test"]
    assert data.references["test"] == [data.tokenizer.normalize(c) for c in test.captions]


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_prose_edge_cases_become_captions_and_batches(tmp_path: Path, tokenizer: str) -> None:
    snapshot = tmp_path / "edge"
    standin.write_edge_cases(snapshot, train=3, test=2, image_size=(64, 36))
    size = ["data.vocab_max_size=600"] if tokenizer == "bpe" else []  # word: every train word, so decoding is exact
    # 90% coverage: on so few captions 99% would include the ~2,000-word paragraph itself
    data = prose_data(tmp_path, snapshot, [f"data.tokenizer={tokenizer}", "data.caption_coverage=0.9", *size])
    seen = set()
    for split in ("train", "val", "test"):
        stories, tokens, lengths = data.splits[split], data.datasets[split].tokens, data.datasets[split].lengths
        for s, story in enumerate(stories.story_ids):
            if not story.startswith("edge-"):
                continue
            seen.add(story.removesuffix("-test"))
            for frame in range(stories.offsets[s], stories.offsets[s + 1]):
                assert 1 <= lengths[frame] <= data.max_caption_len and tokens[frame, lengths[frame] - 1] == EOS_ID
                caption = data.tokenizer.normalize(stories.captions[frame])
                if lengths[frame] < data.max_caption_len and split == "train":  # whole, all words known
                    assert data.tokenizer.decode(tokens[frame].tolist()) == caption
    assert seen == {"edge-empty-span", "edge-tags-only", "edge-curly-quotes", "edge-em-dashes", "edge-long-paragraph",
                    "edge-multi-id"}
    long = next(split for split in ("train", "val", "test") if "edge-long-paragraph" in data.splits[split].story_ids)
    assert data.text_stats[f"{long}_truncated_share"] > 0  # the ~2,000-word paragraph is cut, and counted
    batch = next(iter(data.train_dataloader()))
    assert batch["target_caption"].shape[1] <= data.max_caption_len
