"""Story batches: the train order shuffles stories and keeps each story's windows together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from storyreason.data.samplers import EpochSampler
from tests.data.test_datamodule import datamodule

STORIES = np.repeat(np.arange(6), [4, 3, 4, 1, 4, 2])  # 18 windows of 6 stories


def runs(order: list[int]) -> list[int]:
    """The stories in `order`, one entry per run of consecutive windows of the same story."""
    stories = STORIES[order]
    return [int(s) for i, s in enumerate(stories) if i == 0 or s != stories[i - 1]]


def test_story_order_keeps_each_story_together_and_changes_with_the_epoch() -> None:
    sampler = EpochSampler(range(18), seed=3, groups=STORIES)
    order = list(sampler)
    assert sorted(order) == list(range(18))
    assert sorted(runs(order)) == list(range(6))  # each story is one run
    assert order == list(EpochSampler(range(18), seed=3, groups=STORIES))
    sampler.set_epoch(1)
    assert runs(list(sampler)) != runs(order)


def test_story_order_is_dealt_to_ranks_and_resumed_like_the_window_order() -> None:
    single = list(EpochSampler(range(18), seed=5, groups=STORIES))
    ranks = [list(EpochSampler(range(18), num_replicas=2, rank=r, seed=5, groups=STORIES)) for r in (0, 1)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    resumed = EpochSampler(range(18), seed=5, groups=STORIES)
    resumed.skip = 7
    assert list(resumed) == single[7:]


def test_story_batches_hold_whole_stories(tmp_path: Path) -> None:
    """With data.story_batches=true a train batch is whole stories, except where a batch boundary cuts one."""
    dm = datamodule(tmp_path, overrides=["data.story_batches=true"])
    data = dm.splits["train"]
    owner = torch.from_numpy(np.repeat(np.arange(data.num_stories), data.story_lengths))  # story of each frame
    per_story = torch.bincount(torch.from_numpy(dm.story_index("train")))  # windows of each story
    cut = 0
    for batch in dm.train_dataloader():
        stories, counts = torch.unique(owner[batch["frame_index"][:, 0]], return_counts=True)
        cut += int((counts < per_story[stories]).sum())
    batches = -(-len(dm.datasets["train"]) // dm.batch_size)
    assert cut <= 2 * (batches - 1)  # only the first and last story of a batch may be cut
    assert len(per_story) > 2 * batches  # so most stories are whole
