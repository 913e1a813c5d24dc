"""Seeded splits by story: every frame of a story lands in the same split, so no split sees another's story."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from storyreason.data.errors import DataError


def split_stories(
    story_ids: Sequence[str], fractions: Mapping[str, float], seed: int, rest: str = "train"
) -> dict[str, list[str]]:
    """Assign each story to a split: `fractions[s]` of the stories (at least one) to split s, the rest to `rest`.

    The draw depends only on `seed` and the set of ids, not on their order; each split keeps the
    ids in their input order.
    """
    ids = list(dict.fromkeys(story_ids))
    for name, fraction in fractions.items():
        if not 0 < fraction < 1:
            raise DataError(f"data.source.{name}_fraction must be in (0, 1), got {fraction}")
    counts = {name: max(1, round(fraction * len(ids))) for name, fraction in fractions.items()}
    if sum(counts.values()) >= len(ids):
        raise DataError(
            f"{len(ids)} stories are too few to split into {rest} and {' and '.join(fractions)} "
            f"with at least one story each"
        )
    ordered = sorted(ids)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    assigned: dict[str, str] = {}
    start = 0
    for name, count in counts.items():
        assigned.update((story, name) for story in shuffled[start : start + count])
        start += count
    splits: dict[str, list[str]] = {rest: [], **{name: [] for name in fractions}}
    for story in ids:
        splits[assigned.get(story, rest)].append(story)
    return splits
