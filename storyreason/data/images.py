"""Frames from encoded images: decode, convert to RGB, bring to a square size; many at once in worker processes.

Decoding dominates the first run on real data, so JPEGs decode in draft mode: libjpeg scales the
DCT by 1/2, 1/4 or 1/8 to the smallest size that still covers the target, which makes a 1280x720
still about 4x cheaper to decode than at full size.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from storyreason.data.errors import DataError

RESIZE_POLICIES = ("center_crop", "pad", "squash")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

ImageInput = bytes | str | Path  # encoded bytes or a file


def check_policy(policy: str) -> str:
    """`policy` if it is one of RESIZE_POLICIES, else a DataError naming the key."""
    if policy not in RESIZE_POLICIES:
        raise DataError(f"data.source.resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    return policy


def decode_frame(image: ImageInput, size: int, policy: str) -> np.ndarray:
    """(3, size, size) uint8 RGB frame of one encoded image.

    center_crop: scale the short side to `size` and cut the middle square (default);
    pad: scale the long side to `size` and pad with black; squash: scale each side to `size`.
    Every Pillow mode is read with its true brightness (see to_rgb).
    """
    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
        im.draft("RGB", _draft_size(*im.size, size, policy))
        im = to_rgb(im)
    ImageOps.exif_transpose(im, in_place=True)
    w, h = im.size
    if policy == "center_crop":
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        out = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
    elif policy == "squash":
        out = im.resize((size, size), Image.Resampling.BICUBIC)
    else:
        scale = size / max(w, h)
        inner = (max(1, round(w * scale)), max(1, round(h * scale)))
        out = Image.new("RGB", (size, size))
        out.paste(im.resize(inner, Image.Resampling.BICUBIC), ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return np.ascontiguousarray(np.asarray(out, np.uint8).transpose(2, 0, 1))


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of an image in any Pillow mode, with its true brightness.

    Pillow's own conversion clips integer and float greys at 255, which turns a 16-bit frame white:
    16-bit modes (I;16, I;16B, I;16L, I;16N) and I (which Pillow uses for 16-bit PNGs) are scaled
    from 0..65535, F from 0..1 when every value lies there (else read as 0..255, as Pillow does).
    A mode Pillow cannot convert raises ValueError naming it; callers name the file.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        grey = np.asarray(im).astype(np.float64) / 257
    elif im.mode == "F":
        grey = np.nan_to_num(np.asarray(im, np.float64))
        if grey.size and 0 <= grey.min() and grey.max() <= 1:
            grey = grey * 255
    else:
        try:
            return im.convert("RGB")
        except ValueError as err:
            raise ValueError(f"image mode {im.mode} cannot be converted to RGB ({err})") from None
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")


def _draft_size(w: int, h: int, size: int, policy: str) -> tuple[int, int]:
    """The smallest decoded size (w, h) from which `policy` still gets `size` pixels a side."""
    if policy == "squash":
        return size, size
    scale = size / (min(w, h) if policy == "center_crop" else max(w, h))
    return math.ceil(w * scale), math.ceil(h * scale)


def _decode_chunk(chunk: list[tuple[int, ImageInput]], size: int, policy: str) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """Decode a chunk of (index, image); failures become {index: message} instead of raising."""
    frames = np.zeros((len(chunk), 3, size, size), np.uint8)
    errors = {}
    for i, (index, image) in enumerate(chunk):
        try:
            frames[i] = decode_frame(image, size, policy)
        except UnidentifiedImageError:
            errors[index] = "not an image file in a format Pillow reads"
        except Exception as err:  # any decoder failure is a bad image, reported by index
            errors[index] = f"{type(err).__name__}: {err}".splitlines()[0]
    return [index for index, _ in chunk], frames, errors


def _chunked(images: Iterable[ImageInput], chunk_size: int) -> Iterator[list[tuple[int, ImageInput]]]:
    """Lists of up to `chunk_size` (index, image) pairs, read lazily."""
    numbered = enumerate(images)
    while chunk := list(islice(numbered, chunk_size)):
        yield chunk


def default_workers() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_frames(
    images: Iterable[ImageInput],
    count: int,
    size: int,
    policy: str,
    workers: int | None = None,
    chunk_size: int = 32,
    fail_fast: bool = False,
    desc: str = "decoding frames",
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode `count` images into (count, 3, size, size) uint8 frames, in order, with a progress bar.

    Returns the frames and {index: error} of the images that failed (their frames stay black).
    `images` is consumed lazily, so at most a few chunks of encoded bytes are in memory at once.
    With more than one worker and more than one chunk, chunks go to worker processes; with
    `fail_fast` no new chunk starts after the first failure.
    """
    check_policy(policy)
    workers = workers or default_workers()
    frames = np.zeros((count, 3, size, size), np.uint8)
    errors: dict[int, str] = {}
    chunks = _chunked(images, chunk_size)
    with tqdm(total=count, desc=desc, unit="frame", leave=False, dynamic_ncols=True) as bar:

        def store(result: tuple[list[int], np.ndarray, dict[int, str]]) -> None:
            indices, decoded, failed = result
            frames[indices] = decoded
            errors.update(failed)
            bar.update(len(indices))

        if workers <= 1 or count <= chunk_size:
            for chunk in chunks:
                store(_decode_chunk(chunk, size, policy))
                if fail_fast and errors:
                    break
            return frames, errors
        # fork where there is one: workers start at once and never re-run the user's main script
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            pending: set[Future] = set()
            for chunk in chunks:
                pending.add(pool.submit(_decode_chunk, chunk, size, policy))
                if len(pending) >= 2 * workers:  # bound the encoded bytes in flight
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        store(future.result())
                if fail_fast and errors:
                    break
            for future in pending:
                store(future.result())
    return frames, errors
