"""The training order: one permutation per epoch, drawn from the seed and the epoch alone, so a run
resumed in the middle of an epoch can skip exactly the batches it had already trained on."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffles with a generator seeded by `seed + epoch` (never the global RNG) and deals this rank
    every `num_replicas`-th index, as `DistributedSampler` does; being one, Lightning keeps it under
    DDP instead of wrapping it. Rank r's batch j is then part of the single-process batch j when the
    per-rank batch size is the single-process one divided by the number of ranks.

    With `groups` (one group id per index, e.g. the story of each window) the groups are shuffled
    instead and each one's indices follow one another, so a batch holds whole stories and what their
    overlapping windows share is computed once per batch.

    `skip` indices of this rank's share are left out of the next epoch only: a resumed run sets it
    to the number of samples its checkpoint had already trained on.
    """

    def __init__(
        self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0, groups: np.ndarray | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if groups is not None and len(groups) != len(dataset):
            raise ValueError(f"{len(groups)} group ids for {len(dataset)} samples")
        self.groups = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        self.skip = 0

    def order(self) -> list[int]:
        """This epoch's permutation of every index, before dealing to ranks."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.groups is None:
            return torch.randperm(len(self.dataset), generator=generator).tolist()
        place = torch.randperm(int(self.groups.max(initial=-1)) + 1, generator=generator).numpy()
        return np.argsort(place[self.groups], kind="stable").tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        order = (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size]  # every rank as many
        skip, self.skip = self.skip, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][skip:])
