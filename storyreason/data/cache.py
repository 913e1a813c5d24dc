"""The decoded-frame cache shared by every story source.

A source is decoded once into uint8 arrays on disk, keyed by a hash of the source and every
preprocessing setting (`source.cache_key()`), so a changed setting is a new key and never a stale
hit. A cache entry is built in a private temporary folder and renamed into place in one atomic
step: a crashed or concurrent build never leaves a folder that a later run would trust. Sources
read from files put `file_fingerprint` of their input in the key, so edited input is a new key too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from storyreason.data.errors import DataError
from storyreason.data.stories import SPLITS, Oracle, StorySplit

log = logging.getLogger(__name__)
_META = "meta.json"


class StorySource(Protocol):
    """What the cache needs of a source."""

    def cache_key(self) -> dict: ...

    def load(self) -> dict[str, StorySplit]: ...


def cache_path(source: StorySource, cache_dir: str | Path) -> Path:
    """Folder of the cache entry for `source` (it may not exist yet)."""
    return _entry_path(source.cache_key(), cache_dir)


def is_cached(source: StorySource, cache_dir: str | Path) -> bool:
    """Whether a complete cache entry for `source` exists (a build in progress is not one)."""
    return (cache_path(source, cache_dir) / _META).is_file()


def _entry_path(key: dict, cache_dir: str | Path) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['source']}-{digest}"


def file_fingerprint(root: Path, files: Iterable[Path]) -> dict:
    """Identity of input files for a cache key: the root, the file count and a hash of every path, size and mtime."""
    digest = hashlib.sha256()
    count = 0
    for file in sorted(files):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count += 1
    return {"path": str(root), "files": count, "sha256": digest.hexdigest()}


def build_cache(source: StorySource, cache_dir: str | Path) -> Path:
    """Decode `source` into the cache unless an entry for its key exists; return the entry's folder."""
    key = source.cache_key()
    path = _entry_path(key, cache_dir)
    if (path / _META).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-{socket.gethostname()}-", dir=path.parent))
    try:
        splits = source.load()
        _check_not_empty(splits, key["source"])
        meta = {"key": key, "splits": {}}
        for split in SPLITS:
            data = splits[split]
            np.save(tmp / f"{split}.frames.npy", data.frames)
            meta["splits"][split] = {
                "offsets": data.offsets.tolist(),
                "captions": data.captions,
                "story_ids": data.story_ids,
                "skipped": data.skipped,
            }
            if data.oracle is not None:
                np.save(tmp / f"{split}.oracle_frames.npy", data.oracle.frames)
                oracle = {"index": data.oracle.index.tolist(), "captions": data.oracle.captions}
                meta["splits"][split]["oracle"] = oracle
            if data.regions is not None:
                np.save(tmp / f"{split}.regions.npy", data.regions)
                meta["splits"][split]["regions"] = True
        with open(tmp / _META, "w") as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, path)
            log.info("cached %s at %s", meta["key"]["source"], path)
        except OSError:
            if not (path / _META).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


_BUILD = re.compile(r"^\..+\.tmp-(\d+)-(.+)-[^-]+$")  # .<entry>.tmp-<pid>-<host>-<random>


def remove_abandoned_builds(cache_dir: Path) -> list[Path]:
    """Remove the temporary folders of builds whose process is gone (a build killed mid-way leaves one,
    hundreds of MB). A build of a live process, or of another host sharing the folder, is left alone."""
    removed = []
    for folder in cache_dir.glob(".*.tmp-*"):
        match = _BUILD.match(folder.name)
        if match is None or match.group(2) != socket.gethostname() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s, left by a cache build that did not finish", folder)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _check_not_empty(splits: dict[str, StorySplit], source: str) -> None:
    """An empty split is an empty dataset for training or evaluation: refuse it before anything is cached."""
    for split in SPLITS:
        data = splits[split]
        if data.num_stories == 0:
            skipped = f"; all {len(data.skipped)} skipped, first: {data.skipped[0]}" if data.skipped else ""
            raise DataError(f"{source}: the {split} split has no usable stories{skipped}")


def load_cache(path: str | Path) -> dict[str, StorySplit]:
    """Read a cache entry written by `build_cache` (no image is decoded)."""
    path = Path(path)
    with open(path / _META) as f:
        meta = json.load(f)
    splits = {}
    for split in SPLITS:
        info = meta["splits"][split]
        oracle = info.get("oracle")
        splits[split] = StorySplit(
            frames=np.load(path / f"{split}.frames.npy"),
            offsets=np.asarray(info["offsets"], np.int64),
            captions=info["captions"],
            story_ids=info["story_ids"],
            skipped=info.get("skipped", []),
            oracle=None if oracle is None else Oracle(np.asarray(oracle["index"], np.int64),
                                                      np.load(path / f"{split}.oracle_frames.npy"), oracle["captions"]),
            regions=np.load(path / f"{split}.regions.npy") if info.get("regions") else None,
        )
    return splits
