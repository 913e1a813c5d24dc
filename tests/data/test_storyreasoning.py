"""`data=storyreasoning` on small files in exactly the published parquet schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storyreason.data import images
from storyreason.data.cache import build_cache, cache_path, is_cached, load_cache
from storyreason.data.datamodule import StoryDataModule
from storyreason.data.errors import DataError
from storyreason.data.sources.storyreasoning import StoryReasoning
from tests.data.conftest import encode_image, story_row, write_snapshot


def source(path: Path, tmp_path: Path, **settings) -> StoryReasoning:
    settings = {"val_fraction": 0.25, "decode_workers": 1, "hf_cache_dir": str(tmp_path / "hf"), **settings}
    return StoryReasoning(path=str(path), **settings)


def assert_nothing_cached(cache: Path) -> None:
    """No entry, and no temporary folder left behind."""
    assert not cache.exists() or list(cache.iterdir()) == []


def test_snapshot_gives_captioned_frames_and_story_splits(snapshot: Path, tmp_path: Path) -> None:
    splits = load_cache(build_cache(source(snapshot, tmp_path), tmp_path / "cache"))
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert sorted(train.story_ids + val.story_ids) == [str(100 + i) for i in range(8)]
    assert len(val.story_ids) == 2 and not set(train.story_ids) & set(val.story_ids)
    assert test.story_ids == ["900", "901", "902"]
    assert train.frames.shape == (6 * 6, 3, 64, 64) and train.frames.dtype == np.uint8
    assert test.captions[:2] == ["Anna walks past lamp 1 at the pier.", "Anna walks past lamp 2 at the pier."]
    assert val.captions[5] == "Anna walks past lamp 6 at the pier."
    assert all(s.skipped == [] for s in splits.values())


def test_parquet_folder_and_save_to_disk_load_like_the_snapshot(snapshot: Path, tmp_path: Path) -> None:
    import datasets

    flat = tmp_path / "flat"
    flat.mkdir()
    for file in (snapshot / "data").iterdir():
        (flat / file.name).write_bytes(file.read_bytes())
    saved = tmp_path / "saved"
    datasets.load_dataset(str(snapshot), cache_dir=str(tmp_path / "hf")).save_to_disk(str(saved))
    loaded = [load_cache(build_cache(source(p, tmp_path), tmp_path / "cache")) for p in (snapshot, flat, saved)]
    for other in loaded[1:]:
        for split in ("train", "val", "test"):
            assert other[split].story_ids == loaded[0][split].story_ids
            assert other[split].captions == loaded[0][split].captions
            np.testing.assert_array_equal(other[split].frames, loaded[0][split].frames)


def test_hub_name_goes_through_datasets(snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []
    load = datasets.load_dataset

    def offline_hub(name: str, revision: str | None = None, cache_dir: str | None = None):
        calls.append((name, revision))
        return load(str(snapshot), cache_dir=cache_dir)

    monkeypatch.setattr(datasets, "load_dataset", offline_hub)
    hub = StoryReasoning(revision="abc123", val_fraction=0.25, decode_workers=1, hf_cache_dir=str(tmp_path / "hf"))
    assert hub.cache_key()["input"] == {"hub": "daniel3303/StoryReasoning", "revision": "abc123"}
    splits = load_cache(build_cache(hub, tmp_path / "cache"))
    assert calls == [("daniel3303/StoryReasoning", "abc123")]
    assert splits["test"].story_ids == ["900", "901", "902"]


def test_misaligned_story_is_skipped_and_counted(tmp_path: Path) -> None:
    rows = {"train": [story_row(f"{100 + i}", 6, i) for i in range(8)], "test": [story_row("900", 6, 0)]}
    rows["train"][3]["story"] = rows["train"][3]["story"].replace("<gdi image6>", "<gdo image6>")
    splits = load_cache(build_cache(source(write_snapshot(tmp_path / "snap", rows=rows), tmp_path), tmp_path / "cache"))
    skipped = splits["train"].skipped + splits["val"].skipped
    assert skipped == [{"story_id": "103", "reason": "5 <gdi> spans for 6 images"}]
    assert "103" not in splits["train"].story_ids + splits["val"].story_ids


def test_second_load_hits_the_cache_and_decodes_nothing(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_cache(source(snapshot, tmp_path), tmp_path / "cache")

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded on a cached run")

    monkeypatch.setattr(images, "decode_frame", no_decoding)
    monkeypatch.setattr(StoryReasoning, "_open", no_decoding)
    data = StoryDataModule(source(snapshot, tmp_path), item="windows", context=4, cache_dir=str(tmp_path / "cache"))
    data.prepare_data()
    data.setup("fit")
    assert cache_path(data.source, tmp_path / "cache") == first
    assert len(data.datasets["train"]) == 6 * 2  # 6 stories, 2 windows of 4 + 1 in 6 frames


def test_changed_file_or_setting_is_a_new_key(snapshot: Path, tmp_path: Path) -> None:
    before = cache_path(source(snapshot, tmp_path), tmp_path)
    assert cache_path(source(snapshot, tmp_path, resize="pad"), tmp_path) != before
    assert cache_path(source(snapshot, tmp_path, seed=1), tmp_path) != before
    file = next((snapshot / "data").glob("test-*"))
    os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    assert cache_path(source(snapshot, tmp_path), tmp_path) != before


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path .*nowhere does not exist"):
        build_cache(source(tmp_path / "nowhere", tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def test_parquet_without_required_columns_is_refused(snapshot: Path, tmp_path: Path) -> None:
    file = next((snapshot / "data").glob("test-*"))
    pq.write_table(pq.read_table(file).drop_columns(["story"]), file)
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet lacks column\(s\) \['story'\]"):
        build_cache(source(snapshot, tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def test_save_to_disk_without_required_columns_is_refused(snapshot: Path, tmp_path: Path) -> None:
    import datasets

    saved = tmp_path / "saved"
    datasets.load_dataset(str(snapshot), cache_dir=str(tmp_path / "hf")).remove_columns("story_id").save_to_disk(str(saved))
    with pytest.raises(DataError, match=r"the train split of data.path .*saved lacks column\(s\) \['story_id'\]"):
        build_cache(source(saved, tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def test_images_that_are_not_encoded_images_are_refused(snapshot: Path, tmp_path: Path) -> None:
    for file in (snapshot / "data").glob("*.parquet"):
        table = pq.read_table(file)
        paths = pa.array([["a.jpg"]] * table.num_rows, pa.list_(pa.string()))
        pq.write_table(table.set_column(table.schema.get_field_index("images"), "images", paths), file)
    with pytest.raises(DataError, match="column 'images' of the train split .* expected a list of struct"):
        build_cache(source(snapshot, tmp_path), tmp_path / "cache")


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "snap", rows={"train": [story_row(str(i), 6, i) for i in range(4)], "test": []})
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet holds no stories \(empty dataset\)"):
        build_cache(source(snap, tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def test_every_story_misaligned_leaves_nothing_usable(tmp_path: Path) -> None:
    rows = {"train": [story_row(str(i), 6, i) for i in range(4)], "test": [story_row("9", 6, 9)]}
    rows["test"][0]["story"] = "no spans at all"
    with pytest.raises(DataError, match="the test split has no usable stories; all 1 skipped"):
        build_cache(source(write_snapshot(tmp_path / "snap", rows=rows), tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def corrupt(snapshot: Path, split: str, row: int, frame: int, data: bytes) -> None:
    """Replace the bytes of one image in the snapshot's parquet."""
    file = next((snapshot / "data").glob(f"{split}-*"))
    rows = pq.read_table(file).to_pylist()
    rows[row]["images"][frame]["bytes"] = data
    write_snapshot(snapshot, rows={split: rows})


def test_corrupt_image_is_refused_and_nothing_is_cached(snapshot: Path, tmp_path: Path) -> None:
    corrupt(snapshot, "train", 3, 1, b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"story '103': cannot decode image 2 \(103_1.jpg\): .*data.skip_bad=true"):
        build_cache(source(snapshot, tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def test_truncated_image_is_refused(snapshot: Path, tmp_path: Path) -> None:
    corrupt(snapshot, "test", 0, 4, encode_image((96, 54), (1, 2, 3))[:300])
    with pytest.raises(DataError, match=r"story '900': cannot decode image 5"):
        build_cache(source(snapshot, tmp_path), tmp_path / "cache")
    assert_nothing_cached(tmp_path / "cache")


def test_skip_bad_skips_and_lists_the_story_in_the_run_directory(snapshot: Path, tmp_path: Path) -> None:
    corrupt(snapshot, "train", 3, 1, b"junk")
    run = tmp_path / "run"
    data = StoryDataModule(
        source(snapshot, tmp_path, skip_bad=True), item="frames", cache_dir=str(tmp_path / "cache"), report_dir=str(run)
    )
    data.prepare_data()
    data.setup("fit")
    assert "103" not in data.splits["train"].story_ids + data.splits["val"].story_ids
    report = json.loads((run / "skipped_stories.json").read_text())
    [(split, [entry])] = report.items()
    assert entry["story_id"] == "103" and entry["reason"].startswith("cannot decode image 2 (103_1.jpg)")
    assert is_cached(data.source, tmp_path / "cache")


def test_truncated_captions_are_counted(snapshot: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = StoryDataModule(source(snapshot, tmp_path), item="windows", max_caption_len=6, cache_dir=str(tmp_path / "cache"))
    data.prepare_data()
    with caplog.at_level("INFO", logger="storyreason.data.datamodule"):
        data.setup("fit")
    assert "train: 100.0% of 36 captions truncated to data.max_caption_len=6 tokens" in caplog.text
