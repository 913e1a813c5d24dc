"""Frame cache benchmark (not a test): build rate on 1280x720 JPEG stills and cached load time.

    .venv/bin/python benchmarks/cache_bench.py [--frames 300] [--quality 90] [--workers N] [--workdir DIR]

Writes StoryReasoning-schema parquet (a snapshot folder with data/train-* and data/test-*) whose
frames are 1280x720 JPEGs of a panning, textured scene (about the size of a movie still), builds
the frame cache through `data=storyreasoning` exactly as a first run does (HF `datasets` load,
caption extraction, parallel decoding, atomic write) and times it; then times a cached load, once
for this cache and once for a cache entry of the full dataset's 52,016 frames.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from storyreason.data import stories
from storyreason.data.cache import build_cache, cache_path, load_cache
from storyreason.data.images import default_workers
from storyreason.data.sources.storyreasoning import StoryReasoning, write_parquet

FULL_FRAMES = 52_016
FRAMES_PER_STORY = 15


def scene(rng: np.random.Generator, width: int = 1280, height: int = 720) -> np.ndarray:
    """A wide, smooth, textured picture to pan across: (height, 2 * width, 3) uint8."""
    y, x = np.mgrid[0:height, 0 : 2 * width].astype(np.float32)
    picture = np.stack(
        [
            120 + 80 * np.sin(x / rng.uniform(40, 120) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(30, 90)),
            110 + 70 * np.sin((x + y) / rng.uniform(60, 150)),
            100 + 90 * np.cos(x / rng.uniform(80, 200) - y / rng.uniform(50, 120)),
        ],
        axis=-1,
    )
    for _ in range(12):  # a few flat objects with hard edges
        cx, cy, r = rng.uniform(0, 2 * width), rng.uniform(0, height), rng.uniform(30, 160)
        picture[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return picture


def still(
    picture: np.ndarray, shift: int, grain: np.ndarray, rng: np.random.Generator, quality: int, width: int = 1280
) -> bytes:
    """One 1280x720 JPEG of `picture` panned by `shift` pixels, with film grain cut from `grain`."""
    offset = int(rng.integers(grain.shape[1] - width))
    frame = picture[:, shift : shift + width] + grain[:, offset : offset + width]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_snapshot(folder: Path, frames: int, quality: int, seed: int = 0) -> int:
    """Write `frames` frames as StoryReasoning parquet (about 1/8 of the stories in test); return the bytes of JPEG."""
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 4, (720, 1280 + 512, 3)).astype(np.float32)
    stories = max(2, frames // FRAMES_PER_STORY)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    jpeg_bytes = 0
    for s in range(stories):
        picture = scene(rng)
        images = [
            {"bytes": still(picture, int(k * 1280 / FRAMES_PER_STORY), grain, rng, quality), "path": f"story{s}_frame{k}.jpg"}
            for k in range(FRAMES_PER_STORY)
        ]
        jpeg_bytes += sum(len(image["bytes"]) for image in images)
        story = " ".join(
            f"<gdi image{k + 1}> <gdo char1>Someone</gdo> <gda char1>walks</gda> past <gdl bg1>the wall</gdl> {k}. </gdi>"
            for k in range(FRAMES_PER_STORY)
        )
        split = "test" if s % 8 == 7 else "train"
        rows[split].append(
            {"story_id": f"bench-{s}", "images": images, "frame_count": FRAMES_PER_STORY, "chain_of_thought": "", "story": story}
        )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        write_parquet(split_rows, folder / "data" / f"{split}-00000-of-00001.parquet")
    return jpeg_bytes


def full_size_load_time(entry: Path, workdir: Path) -> float:
    """Seconds to load a cache entry as large as the full dataset (52,016 frames), tiled from `entry`."""
    big = workdir / "full-entry"
    big.mkdir()
    meta = json.loads((entry / "meta.json").read_text())
    splits = load_cache(entry)
    share = {"train": 0.8, "val": 0.08, "test": 0.12}
    for split, data in splits.items():
        count = int(FULL_FRAMES * share[split])
        index = np.arange(count) % len(data.frames)
        np.save(big / f"{split}.frames.npy", data.frames[index])
        meta["splits"][split] = {
            "offsets": list(range(0, count, FRAMES_PER_STORY)) + [count],
            "captions": [data.captions[i] for i in index],
            "story_ids": [f"s{i}" for i in range(len(range(0, count, FRAMES_PER_STORY)))],
            "skipped": [],
        }
    (big / "meta.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    loaded = load_cache(big)
    seconds = time.perf_counter() - start
    assert sum(len(d.frames) for d in loaded.values()) >= FULL_FRAMES - 2
    return seconds


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_decoding() -> list[float]:
    """Make `decode_stories` record the wall and CPU seconds of its `decode_frames` call (decoding alone)."""
    seconds: list[float] = []
    decode = stories.decode_frames

    def timed(*args, **kwargs):
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = decode(*args, **kwargs)
        seconds.extend([time.perf_counter() - start, _cpu_seconds() - cpu])
        return result

    stories.decode_frames = timed
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames to write and cache (1280x720 JPEG)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the written frames")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: every core)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cache_bench-", dir=args.workdir))
    try:
        snapshot = workdir / "snapshot"
        start = time.perf_counter()
        jpeg_bytes = write_snapshot(snapshot, args.frames, args.quality)
        print(f"wrote {args.frames} frames of 1280x720 JPEG, quality {args.quality} "
              f"({jpeg_bytes / args.frames / 1e3:.0f} kB each) "
              f"in {time.perf_counter() - start:.1f} s")
        source = StoryReasoning(path=str(snapshot), val_fraction=0.1, decode_workers=args.workers,
                                hf_cache_dir=str(workdir / "hf"))
        decoding = timed_decoding()
        start = time.perf_counter()
        entry = build_cache(source, workdir / "cache")
        build = time.perf_counter() - start
        frames = sum(len(d.frames) for d in load_cache(entry).values())
        start = time.perf_counter()
        load_cache(cache_path(source, workdir / "cache"))
        cached = time.perf_counter() - start
        full_load = full_size_load_time(entry, workdir)
        workers = args.workers or default_workers()
        decode_rate = frames / decoding[0]
        fixed = build - decoding[0]
        full_build = fixed + FULL_FRAMES / decode_rate
        print(f"cache build: {frames} frames in {build:.2f} s = {frames / build:.0f} frames/s end to end "
              f"({workers} decoding processes)")
        print(f"  decoding alone: {decoding[0]:.2f} s = {decode_rate:.0f} frames/s; the other {fixed:.2f} s: "
              "importing datasets, HF load, captions, writing the entry")
        print(f"  full dataset, {FULL_FRAMES} frames: about {full_build:.0f} s ({full_build / 60:.1f} min) = "
              f"{FULL_FRAMES / full_build:.0f} frames/s decoding at this rate (plus the HF Arrow copy of the download)")
        cpu_per_frame = decoding[1] / frames
        print(f"  decoding CPU: {1e3 * cpu_per_frame:.2f} ms a frame, all processes; {workers} otherwise idle cores "
              f"would decode {workers / cpu_per_frame:.0f} frames/s (this machine's load now: {os.getloadavg()[0]:.1f})")
        print(f"cached load: {frames} frames in {cached:.3f} s (cache key included)")
        print(f"  full dataset, {FULL_FRAMES} frames (a cache entry of that size, measured): {full_load:.2f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
