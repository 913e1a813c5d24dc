"""The frame cache: generated once, reused, keyed by every setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storyreason.data.cache import build_cache, cache_path, is_cached, load_cache
from storyreason.data.sources.synthetic import SyntheticWorld
from storyreason.data.stories import SPLITS

COUNTS = {"train": 3, "val": 1, "test": 1}


def test_cache_round_trip_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached splits equal the generated ones; a second build generates nothing."""
    world = SyntheticWorld(num_stories=COUNTS, story_length=5)
    path = build_cache(world, tmp_path)
    assert is_cached(world, tmp_path) and path == cache_path(world, tmp_path)
    cached, fresh = load_cache(path), world.load()
    for split in SPLITS:
        np.testing.assert_array_equal(cached[split].frames, fresh[split].frames)
        np.testing.assert_array_equal(cached[split].offsets, fresh[split].offsets)
        assert cached[split].captions == fresh[split].captions
        assert cached[split].story_ids == fresh[split].story_ids

    def fail() -> None:
        """Stands in for generation on the second build."""
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(world, "load", fail)
    assert build_cache(world, tmp_path) == path


def test_a_changed_setting_is_a_new_entry(tmp_path: Path) -> None:
    base = SyntheticWorld(num_stories=COUNTS, story_length=5)
    build_cache(base, tmp_path)
    for changed in (
        SyntheticWorld(num_stories=COUNTS, story_length=5, seed=1),
        SyntheticWorld(num_stories=COUNTS, story_length=6),
        SyntheticWorld(num_stories={**COUNTS, "train": 4}, story_length=5),
        SyntheticWorld(num_stories=COUNTS, story_length=5, p_appear=0.5),
    ):
        assert cache_path(changed, tmp_path) != cache_path(base, tmp_path)
        assert not is_cached(changed, tmp_path)


def test_the_next_build_removes_folders_of_killed_builds_only(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = tmp_path / f".synthetic-0123.tmp-{int(gone.stdout)}-{host}-abc123"
    live = tmp_path / f".synthetic-4567.tmp-{os.getpid()}-{host}-def456"  # a build in progress
    elsewhere = tmp_path / f".synthetic-89ab.tmp-{int(gone.stdout)}-another-host-ghi789"
    for folder in (dead, live, elsewhere):
        folder.mkdir()
        (folder / "train.frames.npy").write_bytes(b"half written")
    build_cache(SyntheticWorld(num_stories=COUNTS, story_length=5), tmp_path)
    assert not dead.exists() and live.is_dir() and elsewhere.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p not in (live, elsewhere)]


def test_a_build_killed_half_way_leaves_no_entry_a_later_run_trusts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after writing one split: no entry at the key's path; a folder there without meta.json (what a
    build writing in place would leave) is no entry either; the next build writes a whole one."""
    world = SyntheticWorld(num_stories=COUNTS, story_length=5)
    save, written = np.save, []

    def killed_after_one_split(file, array, *args, **kwargs) -> None:
        if written:
            raise KeyboardInterrupt
        written.append(file)
        save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", killed_after_one_split)
    with pytest.raises(KeyboardInterrupt):
        build_cache(world, tmp_path)
    monkeypatch.undo()
    assert written and not cache_path(world, tmp_path).exists() and not is_cached(world, tmp_path)

    half = cache_path(world, tmp_path)
    half.mkdir()
    np.save(half / "train.frames.npy", world.load()["train"].frames[:1])
    assert not is_cached(world, tmp_path)
    half.joinpath("train.frames.npy").unlink()
    half.rmdir()
    path = build_cache(world, tmp_path)
    assert is_cached(world, tmp_path)
    np.testing.assert_array_equal(load_cache(path)["test"].frames, world.load()["test"].frames)
