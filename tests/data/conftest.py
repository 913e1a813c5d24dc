"""Tiny real-format inputs: StoryReasoning parquet in the published schema, and a story folder tree."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from storyreason.data.sources.storyreasoning import write_parquet

# frame sizes: wide and tall, never square, so every resize policy has work to do
SIZES = ((96, 54), (80, 60), (45, 80))


def encode_image(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    """An image of `size` (w, h): `colour` with a white left third, so crops and pads are visible."""
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (0, 0, size[0] // 3, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def grounded_story(frames: int, story_index: int) -> str:
    """Story text with one <gdi imageN> span per frame, all four tag kinds; frame N's caption is
    "Anna walks past lamp N at the pier."."""
    spans = [
        f"<gdi image{n}>\n  <gdo char1>Anna</gdo> <gda char1>walks   past</gda>\n"
        f"<gdo obj{story_index} char2>lamp {n}</gdo> at <gdl bg1>the pier</gdl>. </gdi>"
        for n in range(1, frames + 1)
    ]
    return "Title line outside any span.\n" + "\n".join(spans)


def story_row(story_id: str, frames: int, index: int, fmt: str = "JPEG") -> dict:
    """One row of the published schema: encoded images of non-square sizes and a grounded story."""
    images = [
        {"bytes": encode_image(SIZES[k % len(SIZES)], (20 * index % 256, 40 * k % 256, 90), fmt), "path": f"{story_id}_{k}.jpg"}
        for k in range(frames)
    ]
    return {
        "story_id": story_id,
        "images": images,
        "frame_count": frames,
        "chain_of_thought": "## Image 1\n| Character ID | Name |\n|---|---|\n| char1 | Anna |",
        "story": grounded_story(frames, index),
    }


def write_snapshot(
    root: Path, train: int = 8, test: int = 3, frames: int = 6, rows: dict[str, list[dict]] | None = None
) -> Path:
    """A hub-snapshot folder: root/data/{train,test}-00000-of-00001.parquet. `rows` overrides the generated rows."""
    rows = rows or {
        "train": [story_row(f"{100 + i}", frames, i) for i in range(train)],
        "test": [story_row(f"{900 + i}", frames, 50 + i, fmt="PNG") for i in range(test)],
    }
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        write_parquet(split_rows, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def write_story_folder(root: Path, stories: int = 10, frames: int | list[int] = 6) -> Path:
    """root/images/<story>/frame<k>.{jpg,png} and root/captions/<story>.txt or .json (alternating).

    `frames`: frames of every story, or a list with the frames of each (then it sets the story count).
    """
    lengths = frames if isinstance(frames, list) else [frames] * stories
    for s, frames in enumerate(lengths):
        story = f"story{s}"
        folder = root / "images" / story
        folder.mkdir(parents=True)
        for k in range(frames):
            fmt, suffix = ("PNG", "png") if k % 2 else ("JPEG", "jpg")
            (folder / f"frame{k + 1}.{suffix}").write_bytes(encode_image(SIZES[k % len(SIZES)], (25 * s % 256, 30 * k, 60), fmt))
        captions = [f"story {s} frame {k + 1} :  a  caption" for k in range(frames)]
        (root / "captions").mkdir(exist_ok=True)
        if s % 2:
            (root / "captions" / f"{story}.json").write_text(json.dumps(captions))
        else:
            (root / "captions" / f"{story}.txt").write_text("\n".join(captions) + "\n")
    return root


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return write_snapshot(tmp_path / "snapshot")


@pytest.fixture
def story_folder(tmp_path: Path) -> Path:
    return write_story_folder(tmp_path / "stories")
