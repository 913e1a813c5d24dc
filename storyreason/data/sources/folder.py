"""`data=folder`: a user's own stories, one folder of frames and one caption file per story.

    data.path/
      images/<story_id>/<frames>      any of .jpg .png .webp ...; natural order (frame2 before frame10)
      captions/<story_id>.txt         one line per frame
      captions/<story_id>.json        or a JSON list of strings, one per frame

Stories are split into train/val/test by a seeded draw over the story ids.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from storyreason.data.cache import file_fingerprint
from storyreason.data.errors import DataError, StoryProblems, existing_folder
from storyreason.data.images import IMAGE_SUFFIXES, check_policy
from storyreason.data.splits import split_stories
from storyreason.data.stories import RawStory, StorySplit, decode_stories

log = logging.getLogger(__name__)
LAYOUT = "images/<story_id>/<frames> and captions/<story_id>.txt or .json"


class StoryFolder:
    """Story source for `data=folder`."""

    def __init__(
        self,
        path: str | None,
        image_size: int = 64,
        resize: str = "center_crop",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        skip_bad: bool = False,
        decode_workers: int | None = None,
    ) -> None:
        if not path:
            raise DataError("data=folder needs data.path, the folder holding images/ and captions/")
        self.path = Path(path).expanduser().resolve()
        self.image_size = image_size
        self.resize = check_policy(resize)
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.seed = seed
        self.skip_bad = skip_bad
        self.decode_workers = decode_workers

    def cache_key(self) -> dict:
        """The input's identity (paths, sizes, mtimes of every file) and every preprocessing setting."""
        existing_folder(self.path, LAYOUT)
        files = (
            f
            for sub in ("images", "captions")
            for f in (self.path / sub).rglob("*")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(self.path).parts)
        )
        return {
            "source": "folder",
            "version": 1,
            "input": file_fingerprint(self.path, files),
            "image_size": self.image_size,
            "resize": self.resize,
            "fractions": self.fractions,
            "seed": self.seed,
            "skip_bad": self.skip_bad,
        }

    def load(self) -> dict[str, StorySplit]:
        """List every story, check its captions against its frames, split by story and decode all frames once."""
        existing_folder(self.path, LAYOUT)
        images, captions = self.path / "images", self.path / "captions"
        for folder in (images, captions):
            if not folder.is_dir():
                raise DataError(f"folder: {folder} does not exist; data.path must hold {LAYOUT}")
        story_ids = {d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")}
        story_ids |= {f.stem for f in captions.iterdir() if f.suffix in (".txt", ".json") and not f.name.startswith(".")}
        if not story_ids:
            raise DataError(f"folder: no stories in {self.path}; expected {LAYOUT}")
        ordered = sorted(story_ids, key=natural_key)
        drawn = split_stories(ordered, self.fractions, self.seed)
        split_of = {story: split for split, ids in drawn.items() for story in ids}
        problems = StoryProblems("folder", self.skip_bad)
        stories = [story for sid in ordered if (story := self._story(sid, split_of[sid], problems)) is not None]
        log.info("folder: %d stories, %d frames to decode from %s",
                 len(stories), sum(len(s.images) for s in stories), self.path)
        return decode_stories(stories, problems, self.image_size, self.resize, self.decode_workers)

    def _story(self, story_id: str, split: str, problems: StoryProblems) -> RawStory | None:
        """One story's frames and captions, or None (after `problems`) when they are missing or disagree."""
        story_dir = self.path / "images" / story_id
        if not story_dir.is_dir():
            problems.bad(split, story_id, f"no image folder {story_dir}")
            return None
        frames = frame_files(story_dir)
        if not frames:
            problems.bad(split, story_id, f"no image files in {story_dir}")
            return None
        try:
            texts, caption_file = read_captions(self.path / "captions", story_id)
        except DataError as err:
            problems.bad(split, story_id, str(err))
            return None
        if len(texts) != len(frames):
            problems.bad(split, story_id, f"{caption_file} has {len(texts)} captions for {len(frames)} frames in {story_dir}")
            return None
        return RawStory(story_id, split, frames, texts, [str(f) for f in frames])


def frame_files(folder: Path) -> list[Path]:
    """The image files of a story folder in natural order; hidden files and other suffixes are ignored."""
    files = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    return sorted((f for f in files if f.is_file()), key=natural_key)


def natural_key(name: str | Path) -> list[int | str]:
    """Sort key that orders embedded numbers by value: frame2 < frame10."""
    name = name.name if isinstance(name, Path) else name
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_captions(folder: Path, story_id: str) -> tuple[list[str], Path]:
    """The captions of one story from `<story_id>.txt` (one line per frame) or `.json` (a list of strings), and the file."""
    txt, js = folder / f"{story_id}.txt", folder / f"{story_id}.json"
    if txt.is_file() and js.is_file():
        raise DataError(f"both {txt} and {js} exist; keep one")
    try:
        if txt.is_file():
            lines = txt.read_text(encoding="utf-8").splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            return [" ".join(line.split()) for line in lines], txt
        if js.is_file():
            texts = json.loads(js.read_text(encoding="utf-8"))
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise DataError(f"{js} must hold a JSON list of strings, one per frame")
            return [" ".join(t.split()) for t in texts], js
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read captions from {js if js.is_file() else txt}: {err}") from None
    raise DataError(f"no caption file {txt} or {js}")
