"""The in-memory form every story source produces: one split = all frames of its stories, stacked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class StorySplit:
    """Stories of one split, frames concatenated in story order.

    frames:    (N, 3, H, W) uint8, all frames of all stories
    offsets:   (S + 1,) int64, story s owns frames[offsets[s]:offsets[s + 1]]
    captions:  N strings, one per frame
    story_ids: S strings
    """

    frames: np.ndarray
    offsets: np.ndarray
    captions: list[str]
    story_ids: list[str]

    def __post_init__(self) -> None:
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[1] != 3:
            raise ValueError(f"frames must be uint8 (N, 3, H, W), got {self.frames.dtype} {self.frames.shape}")
        if len(self.offsets) != len(self.story_ids) + 1 or self.offsets[-1] != len(self.frames):
            raise ValueError("offsets do not match story_ids and frames")
        if len(self.captions) != len(self.frames):
            raise ValueError(f"{len(self.captions)} captions for {len(self.frames)} frames")

    @property
    def num_stories(self) -> int:
        return len(self.story_ids)

    @property
    def story_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_stories(cls, stories: list[tuple[str, np.ndarray, list[str]]], image_size: int) -> StorySplit:
        """Stack `(story_id, frames (T, 3, H, W) uint8, captions)` triples into one split."""
        lengths = [len(frames) for _, frames, _ in stories]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        frames = (
            np.concatenate([f for _, f, _ in stories])
            if stories
            else np.zeros((0, 3, image_size, image_size), np.uint8)
        )
        captions = [c for _, _, caps in stories for c in caps]
        return cls(frames, offsets, captions, [sid for sid, _, _ in stories])
