"""The frame cache: generated once, reused, keyed by every setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storyreason.data.cache import build_cache, cache_path, is_cached, load_cache
from storyreason.data.sources.synthetic import SyntheticWorld
from storyreason.data.stories import SPLITS

COUNTS = {"train": 3, "val": 1, "test": 1}


def test_cache_round_trip_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached splits equal the generated ones; a second build generates nothing."""
    world = SyntheticWorld(num_stories=COUNTS, story_length=5)
    path = build_cache(world, tmp_path)
    assert is_cached(world, tmp_path) and path == cache_path(world, tmp_path)
    cached, fresh = load_cache(path), world.load()
    for split in SPLITS:
        np.testing.assert_array_equal(cached[split].frames, fresh[split].frames)
        np.testing.assert_array_equal(cached[split].offsets, fresh[split].offsets)
        assert cached[split].captions == fresh[split].captions
        assert cached[split].story_ids == fresh[split].story_ids

    def fail() -> None:
        """Stands in for generation on the second build."""
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(world, "load", fail)
    assert build_cache(world, tmp_path) == path


def test_a_changed_setting_is_a_new_entry(tmp_path: Path) -> None:
    base = SyntheticWorld(num_stories=COUNTS, story_length=5)
    build_cache(base, tmp_path)
    for changed in (
        SyntheticWorld(num_stories=COUNTS, story_length=5, seed=1),
        SyntheticWorld(num_stories=COUNTS, story_length=6),
        SyntheticWorld(num_stories={**COUNTS, "train": 4}, story_length=5),
        SyntheticWorld(num_stories=COUNTS, story_length=5, p_appear=0.5),
    ):
        assert cache_path(changed, tmp_path) != cache_path(base, tmp_path)
        assert not is_cached(changed, tmp_path)
