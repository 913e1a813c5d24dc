"""The built-in story world: seeded, deterministic, grammatical, and never standing still."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from storyreason.data.sources.synthetic import COLOURS, COLS, ROWS, SHAPES, SyntheticWorld
from storyreason.data.stories import SPLITS, StorySplit
from tests.conftest import CONF

COUNTS = {"train": 6, "val": 3, "test": 3}
_NAME = rf"(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"
_OBJECT = rf"{_NAME} (?:{'|'.join(ROWS)}) (?:{'|'.join(COLS)}) (?:up|down) (?:left|right) \."
_EVENT = rf"(?:the {_NAME} leaves \.|the {_NAME} turns (?:{'|'.join(COLOURS)}) \.|a {_NAME} appears \.)"
CAPTION = re.compile(rf"{_OBJECT}(?: {_OBJECT})*(?: {_EVENT})*")


def world(seed: int = 0, **kwargs: object) -> dict[str, StorySplit]:
    """All splits of a small world."""
    return SyntheticWorld(num_stories=COUNTS, story_length=6, seed=seed, **kwargs).load()


def test_same_seed_gives_identical_stories() -> None:
    first, second = world(seed=3), world(seed=3)
    for split in SPLITS:
        np.testing.assert_array_equal(first[split].frames, second[split].frames)
        assert first[split].captions == second[split].captions
        assert first[split].story_ids == second[split].story_ids


def test_different_seed_gives_different_stories() -> None:
    first, second = world(seed=3), world(seed=4)
    for split in SPLITS:
        assert not np.array_equal(first[split].frames, second[split].frames)
        assert first[split].captions != second[split].captions


def test_frames_are_64x64_rgb_uint8_and_stories_have_the_configured_length() -> None:
    splits = world()
    for split in SPLITS:
        data = splits[split]
        assert data.frames.dtype == np.uint8
        assert data.frames.shape == (COUNTS[split] * 6, 3, 64, 64)
        assert data.story_lengths.tolist() == [6] * COUNTS[split]


def test_captions_follow_the_grammar_including_every_event() -> None:
    """With frequent events, every caption parses and each event kind occurs at least once."""
    splits = world(p_appear=0.3, p_leave=0.3, p_recolour=0.3)
    captions = [c for split in SPLITS for c in splits[split].captions]
    bad = [c for c in captions if not CAPTION.fullmatch(c)]
    assert not bad, f"captions outside the grammar: {bad[:3]}"
    text = " ".join(captions)
    for event in (" leaves .", " turns ", " appears ."):
        assert event in text


def test_next_frame_differs_from_the_last_one() -> None:
    """Objects always move, so a copy of the previous frame is never the right next frame."""
    splits = world()
    for split in SPLITS:
        data = splits[split]
        for begin, end in zip(data.offsets[:-1], data.offsets[1:]):
            story = data.frames[begin:end].astype(np.int16)
            changed = np.abs(np.diff(story, axis=0)).reshape(len(story) - 1, -1).max(axis=1)
            assert (changed > 0).all()


def test_story_ids_of_the_splits_are_disjoint() -> None:
    splits = world()
    ids = [set(splits[split].story_ids) for split in SPLITS]
    assert sum(map(len, ids)) == sum(COUNTS.values())
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_missing_split_or_too_short_story_is_refused() -> None:
    with pytest.raises(ValueError, match="missing split"):
        SyntheticWorld(num_stories={"train": 2, "val": 1})
    with pytest.raises(ValueError, match="story_length must be >= 2"):
        SyntheticWorld(num_stories=COUNTS, story_length=1)



# sha256 of the default world (conf/data/synthetic.yaml), every split's frames then its captions, by the
# version in SyntheticWorld.cache_key(). Caches built by a version hold that version's world, so a line is
# never edited: a changed world is a new version with its own line.
WORLD_SHA256 = {
    1: "97bbdd077f2b9a537040a83dfb8a3f0d88c17a874fff0f47432d69e7e8bd906d",
}


def test_the_default_world_is_the_one_its_cache_key_names() -> None:
    """Generation changes no frame and no caption of the default world unless the cache key's version
    changes too: a cache built by an earlier version would otherwise be trusted for different data, and
    the README's results would no longer be reproducible. One pixel of one frame changes the results,
    so the check is on every byte."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        source = instantiate(compose(config_name="config").data.source)
    version = source.cache_key()["version"]
    assert version in WORLD_SHA256, (
        f"SyntheticWorld.cache_key()['version'] is {version}, which has no digest: add the line "
        f"{version}: \"<sha256 this test reports>\" to WORLD_SHA256 and re-measure the README's results"
    )
    splits = source.load()
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(np.ascontiguousarray(splits[split].frames).tobytes())
        digest.update("\n".join(splits[split].captions).encode())
    assert digest.hexdigest() == WORLD_SHA256[version], (
        f"the generated world changed (sha256 {digest.hexdigest()}) but its cache key did not: bump "
        f"SyntheticWorld.cache_key()['version'] to {max(WORLD_SHA256) + 1}, add that digest to WORLD_SHA256 "
        "(never edit an existing line) and re-measure the README's results"
    )
    assert len(set(WORLD_SHA256.values())) == len(WORLD_SHA256), "two versions pinned to one world"
