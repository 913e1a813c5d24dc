"""The decoded-frame cache shared by every story source.

A source is decoded once into uint8 arrays on disk, keyed by a hash of the source and every
preprocessing setting (`source.cache_key()`), so a changed setting is a new key and never a stale
hit. A cache entry is built in a private temporary folder and renamed into place in one atomic
step: a crashed or concurrent build never leaves a folder that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

from storyreason.data.stories import SPLITS, StorySplit

log = logging.getLogger(__name__)
_META = "meta.json"


class StorySource(Protocol):
    """What the cache needs of a source."""

    def cache_key(self) -> dict: ...

    def load(self) -> dict[str, StorySplit]: ...


def cache_path(source: StorySource, cache_dir: str | Path) -> Path:
    """Folder of the cache entry for `source` (it may not exist yet)."""
    key = source.cache_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['source']}-{digest}"


def is_cached(source: StorySource, cache_dir: str | Path) -> bool:
    return (cache_path(source, cache_dir) / _META).is_file()


def build_cache(source: StorySource, cache_dir: str | Path) -> Path:
    """Decode `source` into the cache unless an entry for its key exists; return the entry's folder."""
    path = cache_path(source, cache_dir)
    if (path / _META).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        splits = source.load()
        meta = {"key": source.cache_key(), "splits": {}}
        for split in SPLITS:
            data = splits[split]
            np.save(tmp / f"{split}.frames.npy", data.frames)
            meta["splits"][split] = {
                "offsets": data.offsets.tolist(),
                "captions": data.captions,
                "story_ids": data.story_ids,
            }
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


def load_cache(path: str | Path) -> dict[str, StorySplit]:
    """Read a cache entry written by `build_cache` (no image is decoded)."""
    path = Path(path)
    with open(path / _META) as f:
        meta = json.load(f)
    splits = {}
    for split in SPLITS:
        info = meta["splits"][split]
        splits[split] = StorySplit(
            frames=np.load(path / f"{split}.frames.npy"),
            offsets=np.asarray(info["offsets"], np.int64),
            captions=info["captions"],
            story_ids=info["story_ids"],
        )
    return splits
