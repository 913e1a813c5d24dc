"""Bad input: the error every source raises, and the `skip_bad` policy for per-story problems."""

from __future__ import annotations

import logging
from pathlib import Path

from storyreason.errors import StoryreasonError

log = logging.getLogger(__name__)


class DataError(StoryreasonError):
    """Input that cannot become a dataset. The message is one line naming the file, story or key."""


def existing_folder(path: Path, expected: str) -> Path:
    """`path` if it is a folder; else a DataError naming data.path and what it should hold."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"data.path {path} {what}: expected {expected}")
    return path


class StoryProblems:
    """Per-story problems met while loading one source.

    `bad` raises a `DataError` at once, or with `skip_bad=True` records the story as skipped;
    `skip` always records (for stories a source leaves out by design, e.g. misaligned captions).
    The records end up in each split's `StorySplit.skipped`, the cache and the run's
    `skipped_stories.json`.
    """

    def __init__(self, source: str, skip_bad: bool) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.skipped: dict[str, list[dict[str, str]]] = {}

    def bad(self, split: str, story_id: str, reason: str) -> None:
        """A story that cannot be used: an error, or a skip when `skip_bad` is set."""
        if not self.skip_bad:
            raise DataError(f"{self.source}: story {story_id!r}: {reason} (data.skip_bad=true skips such stories)")
        self.skip(split, story_id, reason)

    def skip(self, split: str, story_id: str, reason: str) -> None:
        """Leave a story out and record why."""
        log.info("%s: skipping story %r: %s", self.source, story_id, reason)
        self.skipped.setdefault(split, []).append({"story_id": story_id, "reason": reason})

    def of(self, split: str) -> list[dict[str, str]]:
        """The stories of `split` left out so far."""
        return self.skipped.get(split, [])
