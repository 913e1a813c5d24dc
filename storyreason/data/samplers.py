"""The training order: one permutation per epoch, drawn from the seed and the epoch alone, so a run
resumed in the middle of an epoch can skip exactly the batches it had already trained on."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffles with a generator seeded by `seed + epoch` (never the global RNG) and deals this rank
    every `num_replicas`-th index, as `DistributedSampler` does; being one, Lightning keeps it under
    DDP instead of wrapping it. Rank r's batch j is then part of the single-process batch j when the
    per-rank batch size is the single-process one divided by the number of ranks.

    `skip` indices of this rank's share are left out of the next epoch only: a resumed run sets it
    to the number of samples its checkpoint had already trained on.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])
