"""`data=folder`: a user's own story folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from storyreason.data.cache import build_cache, cache_path, load_cache
from storyreason.data.datamodule import StoryDataModule
from storyreason.data.errors import DataError
from storyreason.data.sources.folder import StoryFolder, natural_key
from tests.data.conftest import encode_image, write_story_folder


def source(path: Path, **settings) -> StoryFolder:
    return StoryFolder(path=str(path), **{"val_fraction": 0.2, "test_fraction": 0.2, "decode_workers": 1, **settings})


def build(path: Path, tmp_path: Path, **settings) -> dict:
    return load_cache(build_cache(source(path, **settings), tmp_path / "cache"))


def assert_nothing_cached(cache: Path) -> None:
    assert not cache.exists() or list(cache.iterdir()) == []


def test_stories_frames_and_captions(story_folder: Path, tmp_path: Path) -> None:
    splits = build(story_folder, tmp_path)
    ids = [sid for split in splits.values() for sid in split.story_ids]
    assert sorted(ids, key=natural_key) == [f"story{s}" for s in range(10)]
    assert [len(splits[s].story_ids) for s in ("train", "val", "test")] == [6, 2, 2]
    assert len(set(ids)) == 10  # no story in two splits
    for split in splits.values():
        assert split.frames.shape[1:] == (3, 64, 64)
        for i, story in enumerate(split.story_ids):
            s = int(story.removeprefix("story"))
            captions = split.captions[split.offsets[i] : split.offsets[i + 1]]
            assert captions == [f"story {s} frame {k} : a caption" for k in range(1, 7)]  # .txt and .json alike


def test_frames_are_in_natural_order(tmp_path: Path) -> None:
    root = write_story_folder(tmp_path / "stories", stories=3, frames=1)
    for s in range(3):
        folder = root / "images" / f"story{s}"
        shutil.rmtree(folder)
        folder.mkdir()
        for k, name in enumerate(["f10.png", "f2.png", "f1.png"]):
            (folder / name).write_bytes(encode_image((40, 30), (100 * k, 0, 0), "PNG"))
        (root / "captions" / f"story{s}.txt").unlink(missing_ok=True)
        (root / "captions" / f"story{s}.json").unlink(missing_ok=True)
        (root / "captions" / f"story{s}.txt").write_text("one\ntwo\nten\n")
    splits = build(root, tmp_path, val_fraction=0.3, test_fraction=0.3)
    frames = splits["train"].frames  # f1 (red 200), f2 (red 100), f10 (red 0), in that order
    assert [int(f[0, 32, 60]) for f in frames] == [200, 100, 0]
    assert splits["train"].captions == ["one", "two", "ten"]


def test_changed_caption_file_is_a_new_key(story_folder: Path, tmp_path: Path) -> None:
    before = cache_path(source(story_folder), tmp_path)
    (story_folder / "captions" / "story0.txt").write_text("\n".join(["changed"] * 6))
    assert cache_path(source(story_folder), tmp_path) != before


def test_a_changed_image_or_setting_is_a_new_key(story_folder: Path, tmp_path: Path) -> None:
    before = cache_path(source(story_folder), tmp_path)
    frame = story_folder / "images" / "story3" / "frame2.png"
    keys = {cache_path(source(story_folder, **change), tmp_path) for change in
            ({"resize": "pad"}, {"val_fraction": 0.3}, {"test_fraction": 0.3}, {"seed": 7})}
    assert before not in keys and len(keys) == 4
    frame.write_bytes(encode_image((50, 40), (1, 2, 3), "PNG"))
    assert cache_path(source(story_folder), tmp_path) != before


def test_val_and_test_fractions_are_each_their_own(story_folder: Path, tmp_path: Path) -> None:
    splits = build(story_folder, tmp_path, val_fraction=0.1, test_fraction=0.3)
    assert [len(splits[s].story_ids) for s in ("train", "val", "test")] == [6, 1, 3]
    splits = build(story_folder, tmp_path, val_fraction=0.3, test_fraction=0.1)
    assert [len(splits[s].story_ids) for s in ("train", "val", "test")] == [6, 3, 1]


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path .*nowhere does not exist"):
        build(tmp_path / "nowhere", tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_missing_images_folder_is_refused(story_folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(story_folder / "images")
    with pytest.raises(DataError, match=r"folder: .*stories/images does not exist"):
        build(story_folder, tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_story_without_image_folder_is_refused(story_folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(story_folder / "images" / "story3")
    with pytest.raises(DataError, match=r"story 'story3': no image folder .*images/story3"):
        build(story_folder, tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_missing_caption_file_is_refused(story_folder: Path, tmp_path: Path) -> None:
    (story_folder / "captions" / "story4.txt").unlink()
    with pytest.raises(DataError, match=r"story 'story4': no caption file .*captions/story4.txt or .*story4.json"):
        build(story_folder, tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_caption_count_must_match_frame_count(story_folder: Path, tmp_path: Path) -> None:
    (story_folder / "captions" / "story5.json").write_text(json.dumps(["only", "four", "captions", "here"]))
    with pytest.raises(DataError, match=r"story 'story5': .*story5.json has 4 captions for 6 frames in .*images/story5"):
        build(story_folder, tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_corrupt_image_is_refused(story_folder: Path, tmp_path: Path) -> None:
    (story_folder / "images" / "story2" / "frame3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"story 'story2': cannot decode .*images/story2/frame3.jpg"):
        build(story_folder, tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "captions").mkdir()
    with pytest.raises(DataError, match=r"folder: no stories in .*empty"):
        build(tmp_path / "empty", tmp_path)
    assert_nothing_cached(tmp_path / "cache")


def test_skip_bad_skips_each_bad_story_and_keeps_the_rest(story_folder: Path, tmp_path: Path) -> None:
    (story_folder / "images" / "story2" / "frame3.jpg").write_bytes(b"junk")
    (story_folder / "captions" / "story4.txt").unlink()
    (story_folder / "captions" / "story5.json").write_text(json.dumps(["one"]))
    splits = build(story_folder, tmp_path, skip_bad=True)
    skipped = {entry["story_id"]: entry["reason"] for split in splits.values() for entry in split.skipped}
    assert sorted(skipped) == ["story2", "story4", "story5"]
    assert "frame3.jpg" in skipped["story2"] and "no caption file" in skipped["story4"]
    kept = [sid for split in splits.values() for sid in split.story_ids]
    assert len(kept) == 7 and not set(kept) & set(skipped)
    assert all(np.any(split.frames) for split in splits.values())


def test_a_split_left_empty_by_skips_is_refused(story_folder: Path, tmp_path: Path) -> None:
    for story in range(10):
        (story_folder / "captions" / f"story{story}.txt").unlink(missing_ok=True)
        (story_folder / "captions" / f"story{story}.json").unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"folder: the train split has no usable stories; all 6 skipped"):
        build(story_folder, tmp_path, skip_bad=True)
    assert_nothing_cached(tmp_path / "cache")


def test_stories_shorter_than_a_window_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_story_folder(tmp_path / "stories", frames=[6, 3, 6, 2, 6, 6, 4, 6, 6, 6])
    data = StoryDataModule(source(root, seed=1), item="windows", context=4, cache_dir=str(tmp_path / "cache"))
    data.prepare_data()
    with caplog.at_level("WARNING"):
        data.setup("fit")
    train = data.splits["train"]
    short = int((train.story_lengths < 5).sum())
    assert short > 0 and f"train: skipped {short} of {train.num_stories} stories shorter than" in caplog.text
    assert len(data.datasets["train"]) == 2 * (train.num_stories - short)


def test_nothing_but_short_stories_is_refused(tmp_path: Path) -> None:
    root = write_story_folder(tmp_path / "stories", frames=[3, 2, 4, 3, 2])
    data = StoryDataModule(source(root), item="windows", context=4, cache_dir=str(tmp_path / "cache"))
    data.prepare_data()
    with pytest.raises(DataError, match="no train windows: data.context=4 needs stories of at least 5 frames, the longest"):
        data.setup("fit")


def test_empty_captions_are_kept_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    from storyreason.data.stories import RawStory, warn_empty_captions

    stories = [RawStory("beach", "train", [b"", b""], ["a dog runs", " "], ["beach/1.png", "beach/2.png"]),
               RawStory("cat", "train", [b""], [""], ["cat/1.png"])]
    assert warn_empty_captions(stories, "folder") == 2
    warnings = [r.getMessage() for r in caplog.records if "empty caption" in r.getMessage()]
    assert len(warnings) == 1 and "2 empty caption(s) in 2 stor(ies)" in warnings[0] and "beach/2.png" in warnings[0]
