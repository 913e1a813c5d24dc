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

    With `lengths` (one per index: what a batch holding it must be padded to) the shuffled order is cut
    into chunks of `chunk` indices and each chunk is sorted by length (a group's, with `groups`: its
    longest), so each batch holds items of about one length and pads little; then the chunk's whole
    batches (`batch` indices, the global batch) are shuffled, so that lengths do not rise through the
    chunk. Each chunk is still a random draw. `chunk` should be a whole number of global batches (the
    datamodule uses 50).

    `skip` indices of this rank's share are left out of the next epoch only: a resumed run sets it
    to the number of samples its checkpoint had already trained on.
    """

    def __init__(
        self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0, groups: np.ndarray | None = None,
        lengths: np.ndarray | None = None, chunk: int = 0, batch: int = 1,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        for name, values in (("group ids", groups), ("lengths", lengths)):
            if values is not None and len(values) != len(dataset):
                raise ValueError(f"{len(values)} {name} for {len(dataset)} samples")
        if lengths is not None and (chunk < 1 or batch < 1):
            raise ValueError(f"sorting by length needs a chunk and a batch of at least one index, got chunk={chunk} "
                             f"and batch={batch}")
        self.groups = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        self.lengths, self.chunk, self.batch = (None, 0, 1) if lengths is None else (np.asarray(lengths), chunk, batch)
        if self.lengths is not None and self.groups is not None:  # a group sorts as its longest item
            longest = np.zeros(int(self.groups.max(initial=-1)) + 1, dtype=self.lengths.dtype)
            np.maximum.at(longest, self.groups, self.lengths)
            self.lengths = longest[self.groups]
        self.skip = 0

    def order(self) -> list[int]:
        """This epoch's permutation of every index, before dealing to ranks."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.groups is None:
            order = torch.randperm(len(self.dataset), generator=generator).numpy()
        else:
            place = torch.randperm(int(self.groups.max(initial=-1)) + 1, generator=generator).numpy()
            order = np.argsort(place[self.groups], kind="stable")
        if self.lengths is not None:
            order = np.concatenate([self._sorted(part, generator)
                                    for part in np.split(order, range(self.chunk, len(order), self.chunk))])
        return order.tolist()

    def _sorted(self, part: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """A chunk sorted by length (stably: a group's items stay together), its whole batches then shuffled;
        a last, partial batch stays last, so that no batch boundary moves."""
        part = part[np.argsort(self.lengths[part], kind="stable")]
        whole = len(part) // self.batch
        blocks = part[: whole * self.batch].reshape(whole, self.batch)[torch.randperm(whole, generator=generator).numpy()]
        return np.concatenate([blocks.ravel(), part[whole * self.batch :]])

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        order = (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size]  # every rank as many
        skip, self.skip = self.skip, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][skip:])
