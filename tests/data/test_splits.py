"""Seeded splits by story."""

from __future__ import annotations

import pytest

from storyreason.data.errors import DataError
from storyreason.data.splits import split_stories

IDS = [f"s{i}" for i in range(40)]


def test_splits_share_no_story_and_cover_all() -> None:
    splits = split_stories(IDS, {"val": 0.1, "test": 0.2}, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [28, 4, 8]
    assert sorted(sum(splits.values(), [])) == sorted(IDS)


def test_the_draw_depends_on_the_seed_not_on_the_order() -> None:
    first = split_stories(IDS, {"val": 0.25}, seed=3)
    assert split_stories(list(reversed(IDS)), {"val": 0.25}, seed=3)["val"] == list(reversed(first["val"]))
    assert split_stories(IDS, {"val": 0.25}, seed=4)["val"] != first["val"]


def test_every_split_gets_a_story() -> None:
    splits = split_stories(IDS[:3], {"val": 0.01, "test": 0.01}, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 1, 1]


def test_too_few_stories_or_bad_fractions_are_refused() -> None:
    with pytest.raises(DataError, match="2 stories are too few"):
        split_stories(IDS[:2], {"val": 0.1, "test": 0.1}, seed=0)
    with pytest.raises(DataError, match="data.source.val_fraction must be in"):
        split_stories(IDS, {"val": 1.5}, seed=0)
