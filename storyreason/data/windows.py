"""Story windows: `context` consecutive frames plus the next one as target, never across stories."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def window_index(offsets: np.ndarray, context: int, stride: int) -> np.ndarray:
    """(W, context + 1) global frame indices of every window; stories shorter than context + 1 give none."""
    starts = [
        np.arange(begin, end - context, stride)
        for begin, end in zip(offsets[:-1], offsets[1:])
        if end - begin > context
    ]
    if not starts:
        return np.zeros((0, context + 1), np.int64)
    return (np.concatenate(starts)[:, None] + np.arange(context + 1)[None, :]).astype(np.int64)


def _as_index(indices: list[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.long)


class FrameDataset(Dataset):
    """Single frames for stage 1. Batches are gathered with one tensor index (`__getitems__`)."""

    def __init__(self, frames: torch.Tensor) -> None:
        self.frames = frames  # (N, 3, H, W) uint8

    def __len__(self) -> int:
        return len(self.frames)

    def to(self, device: torch.device | str) -> FrameDataset:
        """Keep the frames on `device`: batches are then gathered there."""
        self.frames = self.frames.to(device)
        return self

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"frames": self.frames[_as_index(indices)]}  # (B, 3, H, W) uint8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class WindowDataset(Dataset):
    """Story windows for stage 2, gathered a whole batch at a time from in-memory tensors.

    Caption tensors are cut to the batch's longest caption (L <= data.max_caption_len): padding is
    masked everywhere it is read, so the cut changes no result and saves the recurrent steps.
    With `oracle` (frames, tokens, lengths of every frame's oracle, as `frames`, `tokens`, `lengths`;
    a source that knows its world's state gives them) batches also carry the target's oracle; with
    `regions` (N, g, g), every frame's region labels (`StorySplit.regions`), those of the last context
    frame and the target.
    """

    def __init__(self, frames: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, windows: torch.Tensor,
                 oracle: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 regions: torch.Tensor | None = None) -> None:
        self.frames = frames  # (N, 3, H, W) uint8
        self.tokens = tokens  # (N, L) int64, `w1 .. wn <eos>` padded
        self.lengths = lengths  # (N,) int64
        self.windows = windows  # (W, K + 1) int64 frame indices
        self.oracle = oracle
        self.regions = regions

    def __len__(self) -> int:
        return len(self.windows)

    def to(self, device: torch.device | str) -> WindowDataset:
        """Keep every tensor on `device`: batches are then gathered there."""
        self.frames, self.tokens = self.frames.to(device), self.tokens.to(device)
        self.lengths, self.windows = self.lengths.to(device), self.windows.to(device)
        if self.oracle is not None:
            self.oracle = tuple(t.to(device) for t in self.oracle)
        if self.regions is not None:
            self.regions = self.regions.to(device)
        return self

    def widths(self) -> torch.Tensor:
        """(W,) the longest caption of each window: its context's, its target's and, where there is one, its
        oracle's. A batch's captions are cut to its windows' longest, since what lies beyond is padding only."""
        return self._longest(self.windows)

    def _longest(self, index: torch.Tensor) -> torch.Tensor:
        """`widths` of the windows whose frames `index` (W, K + 1) names."""
        longest = self.lengths[index].max(dim=1).values
        if self.oracle is not None:  # an oracle caption may be longer than the target's
            longest = torch.maximum(longest, self.oracle[2][index[:, -1]])
        return longest

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = self.windows[_as_index(indices)]  # (B, K + 1)
        context, target = index[:, :-1], index[:, -1]
        lengths = self.lengths[index]  # (B, K + 1)
        width = max(int(self._longest(index).max()), 1)
        batch = {
            "frame_index": index,  # (B, K + 1)
            "context_frames": self.frames[context],  # (B, K, 3, H, W) uint8
            "context_captions": self.tokens[context, :width],  # (B, K, L)
            "context_lengths": lengths[:, :-1],  # (B, K)
            "target_frame": self.frames[target],  # (B, 3, H, W) uint8
            "target_caption": self.tokens[target, :width],  # (B, L)
            "target_length": lengths[:, -1],  # (B,)
        }
        if self.oracle is not None:
            batch |= {
                "oracle_frame": self.oracle[0][target],  # (B, 3, H, W) uint8
                "oracle_caption": self.oracle[1][target, :width],  # (B, L)
            }
        if self.regions is not None:
            batch["regions"] = self.regions[index[:, -2:]].long()  # (B, 2, g, g) last context frame, target
        return batch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dataset already returns whole batches; DataLoader only has to pass them on."""
    return batch
