"""The in-memory form every story source produces: one split = all frames of its stories, stacked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from storyreason.data.errors import StoryProblems
from storyreason.data.images import ImageInput, decode_frames

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Oracle:
    """The best prediction of each frame from the true state of the previous one, for a source that knows
    its world's state (the built-in world): the deterministic dynamics without the random events.

    Most frames follow deterministically, so only the others are stored: the oracle of frame i is
    `frames[j]` and `captions[j]` where `index[j] == i`, and frame i itself everywhere else.

    index:    (M,) int64, frames of the split (global numbers) that a random event changed
    frames:   (M, 3, H, W) uint8, what those frames would have been without their events
    captions: M strings, their captions without the events
    """

    index: np.ndarray
    frames: np.ndarray
    captions: list[str]

    def __post_init__(self) -> None:
        if not len(self.index) == len(self.frames) == len(self.captions):
            raise ValueError(f"oracle of {len(self.index)} frames has {len(self.frames)} frames and "
                             f"{len(self.captions)} captions")

    def all_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) the oracle of every frame of the split whose frames are `frames`."""
        full = frames.copy()
        full[self.index] = self.frames
        return full

    def all_captions(self, captions: list[str]) -> list[str]:
        """N strings, the oracle caption of every frame of the split whose captions are `captions`."""
        full = list(captions)
        for i, caption in zip(self.index.tolist(), self.captions):
            full[i] = caption
        return full


@dataclass
class StorySplit:
    """Stories of one split, frames concatenated in story order.

    frames:    (N, 3, H, W) uint8, all frames of all stories
    offsets:   (S + 1,) int64, story s owns frames[offsets[s]:offsets[s + 1]]
    captions:  N strings, one per frame
    story_ids: S strings
    skipped:   stories of this split the source left out, each {"story_id", "reason"}
    oracle:    the predictable part of each frame, from sources that know their world's state; else None
    regions:   (N, g, g) uint8, where the source knows its objects: each frame's grid of region labels
               (`SyntheticWorld.regions`); else None
    """

    frames: np.ndarray
    offsets: np.ndarray
    captions: list[str]
    story_ids: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    oracle: Oracle | None = None
    regions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[1] != 3:
            raise ValueError(f"frames must be uint8 (N, 3, H, W), got {self.frames.dtype} {self.frames.shape}")
        if len(self.offsets) != len(self.story_ids) + 1 or self.offsets[-1] != len(self.frames):
            raise ValueError("offsets do not match story_ids and frames")
        if len(self.captions) != len(self.frames):
            raise ValueError(f"{len(self.captions)} captions for {len(self.frames)} frames")
        if self.regions is not None and len(self.regions) != len(self.frames):
            raise ValueError(f"{len(self.regions)} region maps for {len(self.frames)} frames")

    @property
    def num_stories(self) -> int:
        return len(self.story_ids)

    @property
    def story_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_stories(
        cls, stories: list[tuple[str, np.ndarray, list[str]]], image_size: int, skipped: Sequence[dict[str, str]] = ()
    ) -> StorySplit:
        """Stack `(story_id, frames (T, 3, H, W) uint8, captions)` triples into one split."""
        lengths = [len(frames) for _, frames, _ in stories]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        frames = (
            np.concatenate([f for _, f, _ in stories])
            if stories
            else np.zeros((0, 3, image_size, image_size), np.uint8)
        )
        captions = [c for _, _, caps in stories for c in caps]
        return cls(frames, offsets, captions, [sid for sid, _, _ in stories], list(skipped))


@dataclass
class RawStory:
    """A story before decoding, as a file-based source lists it.

    images:   its frames in order, encoded (files or bytes); may be a lazy sequence
    captions: one per frame
    names:    how messages name each frame (a file path, or the story and frame number)
    """

    story_id: str
    split: str
    images: Sequence[ImageInput]
    captions: list[str]
    names: list[str]


def warn_empty_captions(stories: list[RawStory], source: str) -> int:
    """One warning naming how many captions are empty and the first frame that has one; their count."""
    empty = [(story, k) for story in stories for k, caption in enumerate(story.captions) if not caption.strip()]
    if empty:
        story, k = empty[0]
        log.warning("%s: %d empty caption(s) in %d stor(ies), first: story %r, frame %d (%s); they are kept as "
                    "empty text", source, len(empty), len({s.story_id for s, _ in empty}), story.story_id, k + 1,
                    story.names[k])
    return len(empty)


def decode_stories(
    stories: list[RawStory], problems: StoryProblems, image_size: int, resize: str, workers: int | None = None
) -> dict[str, StorySplit]:
    """Decode every frame of `stories` once, in parallel, and stack them into the three splits.

    A story with an image that does not decode goes to `problems`: an error naming the file, or
    a skip with `skip_bad`. Empty captions are kept (a frame may have nothing to say) with one warning.
    """
    warn_empty_captions(stories, problems.source)
    offsets = np.concatenate([[0], np.cumsum([len(story.images) for story in stories])]).astype(np.int64)
    frames, errors = decode_frames(
        (image for story in stories for image in story.images),
        int(offsets[-1]),
        image_size,
        resize,
        workers=workers,
        fail_fast=not problems.skip_bad,
        desc=f"decoding {problems.source} frames",
    )
    first_error: dict[int, tuple[int, str]] = {}
    for index, message in sorted(errors.items()):
        owner = int(np.searchsorted(offsets, index, side="right")) - 1
        first_error.setdefault(owner, (index - int(offsets[owner]), message))
    kept: dict[str, list[tuple[str, np.ndarray, list[str]]]] = {split: [] for split in SPLITS}
    for i, story in enumerate(stories):
        if i in first_error:
            frame, message = first_error[i]
            problems.bad(story.split, story.story_id, f"cannot decode {story.names[frame]}: {message}")
            continue
        kept[story.split].append((story.story_id, frames[offsets[i] : offsets[i + 1]], story.captions))
    return {split: StorySplit.from_stories(kept[split], image_size, problems.of(split)) for split in SPLITS}
