"""Story batches: the train order shuffles stories and keeps each story's windows together; with lengths
it also sorts each chunk of the order by length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from storyreason.data.samplers import EpochSampler
from tests.data.test_datamodule import datamodule

STORIES = np.repeat(np.arange(6), [4, 3, 4, 1, 4, 2])  # 18 windows of 6 stories
LENGTHS = np.array([5, 9, 7, 6, 3, 3, 4, 8, 8, 8, 8, 2, 6, 5, 1, 5, 9, 4])  # each window's longest caption


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


def test_length_order_sorts_each_chunk_by_its_stories_longest_caption_and_shuffles_its_batches() -> None:
    """Each chunk of the order holds what the plain story order's chunk holds: sorted by the longest caption
    of each item's story (stories kept together), cut into batches, the batches shuffled; dealing to ranks
    and resuming are unchanged."""
    longest = np.array([max(LENGTHS[STORIES == s]) for s in range(6)])  # 9, 4, 8, 2, 9, 5
    plain = list(EpochSampler(range(18), seed=3, groups=STORIES))
    sampler = EpochSampler(range(18), seed=3, groups=STORIES, lengths=LENGTHS, chunk=6, batch=2)
    order = list(sampler)
    assert sorted(order) == list(range(18))
    rising = 0
    for start in range(0, 18, 6):
        part, drawn = order[start:start + 6], np.array(plain[start:start + 6])
        assert sorted(part) == sorted(drawn)  # a chunk is still the random draw it was
        by_length = drawn[np.argsort(longest[STORIES[drawn]], kind="stable")]
        batches = [tuple(part[i:i + 2]) for i in range(0, 6, 2)]
        assert sorted(batches) == sorted(tuple(by_length[i:i + 2]) for i in range(0, 6, 2))
        rising += batches == [tuple(by_length[i:i + 2]) for i in range(0, 6, 2)]
    assert rising < 3  # the batches of a chunk are shuffled, not left in rising length
    assert order == list(EpochSampler(range(18), seed=3, groups=STORIES, lengths=LENGTHS, chunk=6, batch=2))
    sampler.set_epoch(1)
    assert list(sampler) != order
    ranks = [list(EpochSampler(range(18), num_replicas=2, rank=r, seed=3, groups=STORIES, lengths=LENGTHS, chunk=6,
                               batch=2)) for r in (0, 1)]
    assert ranks[0] == order[0::2] and ranks[1] == order[1::2]
    resumed = EpochSampler(range(18), seed=3, groups=STORIES, lengths=LENGTHS, chunk=6, batch=2)
    resumed.skip = 5
    assert list(resumed) == order[5:]


def test_a_last_partial_batch_stays_last_in_its_chunk() -> None:
    order = list(EpochSampler(range(18), seed=4, lengths=LENGTHS, chunk=18, batch=4))
    assert sorted(LENGTHS[order[16:]]) == sorted(LENGTHS)[16:]  # the two longest: the partial batch, last
    for i in range(0, 16, 4):
        assert list(LENGTHS[order[i:i + 4]]) == sorted(LENGTHS[order[i:i + 4]])


def test_length_order_of_windows_without_stories() -> None:
    order = list(EpochSampler(range(18), seed=4, lengths=LENGTHS, chunk=18, batch=6))
    thirds = [sorted(LENGTHS)[i:i + 6] for i in range(0, 18, 6)]  # the shortest six, the middle six, the longest
    assert sorted(sorted(LENGTHS[order[i:i + 6]]) for i in range(0, 18, 6)) == thirds
    with pytest.raises(ValueError, match="17 lengths for 18 samples"):
        EpochSampler(range(18), lengths=LENGTHS[:17], chunk=6)
    with pytest.raises(ValueError, match="chunk"):
        EpochSampler(range(18), lengths=LENGTHS)


def test_group_by_length_pads_less_and_trains_on_every_window_once(tmp_path: Path) -> None:
    """data.group_by_length=true: the same windows in an epoch, in batches cut to fewer caption steps."""
    seen, steps = {}, {}
    for grouped in (False, True):
        dm = datamodule(tmp_path, overrides=["data=prose", "data.max_caption_len=auto", f"data.group_by_length={str(grouped).lower()}"])
        batches = list(dm.train_dataloader())
        seen[grouped] = sorted(map(tuple, torch.cat([b["frame_index"] for b in batches]).tolist()))
        steps[grouped] = sum(len(b["target_caption"]) * b["target_caption"].shape[1] for b in batches)
        widths = dm.datasets["train"].widths()
        for b in batches:  # a batch is cut to its windows' longest caption, which `widths` gives
            width = b["target_caption"].shape[1]
            assert width == int(widths[_rows(dm, b)].max())
            assert b["context_captions"].shape[-1] == width
            assert max(b["context_lengths"].max(), b["target_length"].max()) <= width  # every caption whole
    assert seen[True] == seen[False]
    assert steps[True] < steps[False]


def _rows(dm, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dataset rows of a batch's windows."""
    windows = dm.datasets["train"].windows
    return torch.stack([torch.nonzero((windows == w).all(dim=1))[0, 0] for w in batch["frame_index"]])
