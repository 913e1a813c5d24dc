"""benchmarks/standin.py: a tiny stand-in loads through the real StoryReasoning source, has the published
statistics' shape (frames per story, words per span, letterboxed widescreen JPEGs) and repeats byte for byte."""

from __future__ import annotations

import io
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from storyreason.data.captions import frame_captions
from storyreason.data.sources.storyreasoning import StoryReasoning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import standin  # noqa: E402

SIZE = (160, 90)


def rows(folder: Path, split: str) -> list[dict]:
    """Every story of a split, in shard order."""
    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    assert files, f"no {split} shards in {folder}"
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def pixels(image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("RGB"), np.int16)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("standin") / "snapshot"
    return folder, standin.write_standin(folder, train=6, test=3, seed=0, image_size=SIZE, workers=1)


def test_loads_through_the_storyreasoning_source_one_caption_per_frame(snapshot: tuple[Path, dict],
                                                                        tmp_path: Path) -> None:
    folder, stats = snapshot
    names = sorted(f.name for f in (folder / "data").iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    splits = StoryReasoning(path=str(folder), image_size=16, decode_workers=1, hf_cache_dir=str(tmp_path / "hf")).load()
    assert sum(s.num_stories for s in splits.values()) == 9 and not any(s.skipped for s in splits.values())
    assert sum(len(s.frames) for s in splits.values()) == stats["frames"]
    for split in splits.values():
        assert len(split.captions) == len(split.frames)
        assert all(split.captions)


def test_stories_have_the_published_shape(snapshot: tuple[Path, dict]) -> None:
    folder, stats = snapshot
    stories = rows(folder, "train") + rows(folder, "test")
    for row in stories:
        assert standin.MIN_FRAMES <= row["frame_count"] == len(row["images"]) <= standin.MAX_FRAMES
        captions = frame_captions(row["story"])
        assert len(captions) == row["frame_count"]
        spans = re.findall(r"<gdi image\d+>(.*?)</gdi>", row["story"], re.DOTALL)
        low, high = standin.SPAN_WORDS
        assert all(low <= len(standin.span_words(span)) <= high for span in spans)
        assert re.search(r"<gdo char\d+>[A-Z][a-z]+</gdo>", row["story"]) and "<gdl bg" in row["story"]
        assert row["chain_of_thought"]
    text = " ".join(c for row in stories for c in frame_captions(row["story"]))
    for mark in (",", ".", '"', "'s"):
        assert mark in text
    assert re.search(r"\w-\w", text) and re.search(r"<gd[ao] (?:\w+ )+\w+>", " ".join(r["story"] for r in stories))
    assert stats["span_words"]["min"] >= low and stats["span_words"]["max"] <= high


def test_frames_are_widescreen_jpegs_letterboxed_in_some_stories_alike_within_a_story(
        snapshot: tuple[Path, dict]) -> None:
    folder, _ = snapshot
    stories = rows(folder, "train") + rows(folder, "test")
    bar = standin.letterbox_bar(SIZE)
    boxed = []
    for row in stories:
        frames = [pixels(image) for image in row["images"]]
        assert all(Image.open(io.BytesIO(i["bytes"])).format == "JPEG" for i in row["images"])
        assert frames[0].shape == (SIZE[1], SIZE[0], 3)
        boxed.append(all(f[: bar - 1].mean() < 8 and f[-bar + 1 :].mean() < 8 for f in frames))
        within = np.mean([np.abs(a - b).mean() for a, b in zip(frames, frames[1:])])
        across = np.abs(frames[0] - pixels(stories[(stories.index(row) + 1) % len(stories)]["images"][0])).mean()
        assert within < across
    assert any(boxed) and not all(boxed)


def test_the_same_seed_writes_the_same_bytes_with_any_number_of_workers(snapshot: tuple[Path, dict],
                                                                        tmp_path: Path) -> None:
    folder, _ = snapshot
    again = tmp_path / "again"
    standin.write_standin(again, train=6, test=3, seed=0, image_size=SIZE, workers=2)
    for name in ("train-00000-of-00001.parquet", "test-00000-of-00001.parquet"):
        assert (again / "data" / name).read_bytes() == (folder / "data" / name).read_bytes()
    other = tmp_path / "other"
    standin.write_standin(other, train=6, test=3, seed=1, image_size=SIZE, workers=1)
    assert rows(other, "train")[0]["story"] != rows(folder, "train")[0]["story"]
    with pytest.raises(FileExistsError):
        standin.write_standin(folder, train=1, test=1, image_size=SIZE, workers=1)


def test_shards_split_a_large_split_and_are_numbered_of_n(tmp_path: Path) -> None:
    stats = standin.write_standin(tmp_path / "s", train=5, test=1, seed=0, image_size=SIZE, workers=1, shard_bytes=1)
    names = sorted(f.name for f in (tmp_path / "s" / "data").iterdir())
    assert names == ["test-00000-of-00001.parquet", *(f"train-{i:05d}-of-00005.parquet" for i in range(5))]
    assert len(rows(tmp_path / "s", "train")) == stats["stories"]["train"] == 5


def test_full_size_plan_has_the_published_frame_total() -> None:
    counts = standin.plan(standin.TRAIN_STORIES, standin.TEST_STORIES, seed=0)
    assert [len(c) for c in counts.values()] == [3552, 626]
    assert sum(int(c.sum()) for c in counts.values()) == 52_016
    every = np.concatenate(list(counts.values()))
    assert every.min() == standin.MIN_FRAMES and every.max() == standin.MAX_FRAMES
    assert 11 <= np.median(every) <= 13


def test_vocabulary_is_zipf_like_over_thousands_of_words() -> None:
    vocab = standin.vocabulary()
    words: Counter[str] = Counter()
    for i in range(150):
        rng = np.random.default_rng([7, i])
        text = standin.story_text(rng, standin.story_cast(rng, vocab), 12, vocab)
        words.update(w.lower() for c in frame_captions(text) for w in standin._WORD.findall(c))
    counts = sorted(words.values(), reverse=True)
    assert len(counts) > 2000
    assert sum(counts[: len(counts) // 10]) > 0.6 * sum(counts)  # a few words carry most of the text
    assert words["the"] == counts[0]


def test_edge_cases_snapshot_keeps_every_edge_case_and_loads(tmp_path: Path) -> None:
    stats = standin.write_edge_cases(tmp_path / "edge", train=3, test=2)
    splits = StoryReasoning(path=str(tmp_path / "edge"), image_size=16, decode_workers=1,
                            hf_cache_dir=str(tmp_path / "hf")).load()
    assert sum(len(s.frames) for s in splits.values()) == stats["frames"]
    stories = {r["story_id"]: r for r in rows(tmp_path / "edge", "train") + rows(tmp_path / "edge", "test")}
    assert set(standin.EDGE_CASES) <= set(stories)
    assert stats["frames"] == sum(r["frame_count"] for r in stories.values())
    captions = {story_id: frame_captions(row["story"]) for story_id, row in stories.items()}
    assert all(len(captions[s]) == stories[s]["frame_count"] for s in captions)
    assert captions["edge-empty-span"][1] == ""
    assert captions["edge-tags-only"][0] == "Sarah runs" and captions["edge-tags-only"][2] == ""
    assert "“Wait,” Zoë said." in captions["edge-curly-quotes"][0] and "’" in captions["edge-curly-quotes"][3]
    assert "—" in captions["edge-em-dashes"][1] and "café" in captions["edge-long-paragraph"][2]
    assert len(captions["edge-long-paragraph"][2].split()) > 1900
    assert "<gdo char1 char2 char3>" in stories["edge-multi-id"]["story"] == stories["edge-multi-id-test"]["story"]
    assert captions["edge-multi-id"][0].startswith("They gathered by the walls of Urban Street")
