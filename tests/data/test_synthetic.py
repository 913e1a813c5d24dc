"""The built-in story world: seeded, deterministic, grammatical, and never standing still."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from storyreason.data.datamodule import StoryDataModule
from storyreason.data.sources.synthetic import COLOURS, COLS, NO_OBJECT, REGION_GRID, ROWS, SHAPES, SyntheticWorld
from storyreason.data.stories import SPLITS, StorySplit
from tests.conftest import CONF

COUNTS = {"train": 6, "val": 3, "test": 3}
_NAME = rf"(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"
_OBJECT = rf"{_NAME} (?:{'|'.join(ROWS)}) (?:{'|'.join(COLS)}) (?:up|down) (?:left|right) \."
_EVENT = rf"(?:the {_NAME} leaves \.|the {_NAME} turns (?:{'|'.join(COLOURS)}) \.|a {_NAME} appears \.)"
CAPTION = re.compile(rf"{_OBJECT}(?: {_OBJECT})*(?: {_EVENT})*")


def world(seed: int = 0, **kwargs: object) -> dict[str, StorySplit]:
    """All splits of a small world."""
    return SyntheticWorld(num_stories=COUNTS, story_length=6, seed=seed, **kwargs).load()


def test_same_seed_gives_identical_stories() -> None:
    first, second = world(seed=3), world(seed=3)
    for split in SPLITS:
        np.testing.assert_array_equal(first[split].frames, second[split].frames)
        assert first[split].captions == second[split].captions
        assert first[split].story_ids == second[split].story_ids


def test_different_seed_gives_different_stories() -> None:
    first, second = world(seed=3), world(seed=4)
    for split in SPLITS:
        assert not np.array_equal(first[split].frames, second[split].frames)
        assert first[split].captions != second[split].captions


def test_frames_are_64x64_rgb_uint8_and_stories_have_the_configured_length() -> None:
    splits = world()
    for split in SPLITS:
        data = splits[split]
        assert data.frames.dtype == np.uint8
        assert data.frames.shape == (COUNTS[split] * 6, 3, 64, 64)
        assert data.story_lengths.tolist() == [6] * COUNTS[split]


def test_captions_follow_the_grammar_including_every_event() -> None:
    """With frequent events, every caption parses and each event kind occurs at least once."""
    splits = world(p_appear=0.3, p_leave=0.3, p_recolour=0.3)
    captions = [c for split in SPLITS for c in splits[split].captions]
    bad = [c for c in captions if not CAPTION.fullmatch(c)]
    assert not bad, f"captions outside the grammar: {bad[:3]}"
    text = " ".join(captions)
    for event in (" leaves .", " turns ", " appears ."):
        assert event in text


def test_next_frame_differs_from_the_last_one() -> None:
    """Objects always move, so a copy of the previous frame is never the right next frame."""
    splits = world()
    for split in SPLITS:
        data = splits[split]
        for begin, end in zip(data.offsets[:-1], data.offsets[1:]):
            story = data.frames[begin:end].astype(np.int16)
            changed = np.abs(np.diff(story, axis=0)).reshape(len(story) - 1, -1).max(axis=1)
            assert (changed > 0).all()


def test_story_ids_of_the_splits_are_disjoint() -> None:
    splits = world()
    ids = [set(splits[split].story_ids) for split in SPLITS]
    assert sum(map(len, ids)) == sum(COUNTS.values())
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_missing_split_or_too_short_story_is_refused() -> None:
    with pytest.raises(ValueError, match="missing split"):
        SyntheticWorld(num_stories={"train": 2, "val": 1})
    with pytest.raises(ValueError, match="story_length must be >= 2"):
        SyntheticWorld(num_stories=COUNTS, story_length=1)



# sha256 of the default world (conf/data/synthetic.yaml), every split's frames then its captions, by the
# version in SyntheticWorld.cache_key(). Caches built by a version hold that version's world, so a line is
# never edited: a changed world is a new version with its own line.
WORLD_SHA256 = {  # every byte a version of the default world writes (version 1 had no oracle)
    1: "97bbdd077f2b9a537040a83dfb8a3f0d88c17a874fff0f47432d69e7e8bd906d",
    2: "4b57c7aad88a1c2a79b5cd9ba7d9799f95d4e56384d67b27c8314d56b7f52ec3",
    3: "be36649d90c2d4e67d9088804b5f00b3c91a5ddcd3bf9c824ab496f7ebc3ba05",  # version 3: version 2's world and each frame's region labels
}


def test_the_default_world_is_the_one_its_cache_key_names() -> None:
    """Generation changes no frame and no caption of the default world unless the cache key's version
    changes too: a cache built by an earlier version would otherwise be trusted for different data, and
    the README's results would no longer be reproducible. One pixel of one frame changes the results,
    so the check is on every byte."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        source = instantiate(compose(config_name="config").data.source)
    version = source.cache_key()["version"]
    assert version in WORLD_SHA256, (
        f"SyntheticWorld.cache_key()['version'] is {version}, which has no digest: add the line "
        f"{version}: \"<sha256 this test reports>\" to WORLD_SHA256 and re-measure the README's results"
    )
    splits = source.load()
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(np.ascontiguousarray(splits[split].frames).tobytes())
        digest.update("\n".join(splits[split].captions).encode())
        oracle = splits[split].oracle  # from version 2: the frames and captions without random events
        digest.update(np.ascontiguousarray(oracle.index, np.int64).tobytes())
        digest.update(np.ascontiguousarray(oracle.frames).tobytes())
        digest.update("\n".join(oracle.captions).encode())
        if version >= 3:  # and each frame's region labels
            digest.update(np.ascontiguousarray(splits[split].regions).tobytes())
    assert digest.hexdigest() == WORLD_SHA256[version], (
        f"the generated world changed (sha256 {digest.hexdigest()}) but its cache key did not: bump "
        f"SyntheticWorld.cache_key()['version'] to {max(WORLD_SHA256) + 1}, add that digest to WORLD_SHA256 "
        "(never edit an existing line) and re-measure the README's results"
    )


def windows_of(tmp_path: Path, **events: float) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every val window of a small world with the given event rates, as one batch, and each frame's caption."""
    source = SyntheticWorld(num_stories=COUNTS, story_length=6, seed=1, **events)
    datamodule = StoryDataModule(source, context=2, batch_size=8, max_caption_len=40, cache_dir=str(tmp_path))
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.datasets["val"]
    return dataset.__getitems__(list(range(len(dataset)))), datamodule.splits["val"].captions


def test_the_oracle_is_the_next_frame_and_caption_unless_a_random_event_happens(tmp_path: Path) -> None:
    """The batches carry each target's oracle: exactly the target where its caption names no event, another
    frame and caption where it does (with the world's event rates raised so that both occur)."""
    batch, captions = windows_of(tmp_path, p_appear=0.3, p_leave=0.3, p_recolour=0.3)
    targets = batch["frame_index"][:, -1].tolist()
    eventful = torch.tensor([bool(re.search(_EVENT, captions[t])) for t in targets])
    assert 0 < int(eventful.sum()) < len(targets)
    same_frame = (batch["oracle_frame"] == batch["target_frame"]).flatten(1).all(dim=1)
    same_caption = (batch["oracle_caption"] == batch["target_caption"]).all(dim=1)
    assert torch.equal(same_frame, ~eventful) and torch.equal(same_caption, ~eventful)
    target, last = batch["target_frame"].float(), batch["context_frames"][:, -1].float()
    assert (batch["oracle_frame"] - target).abs().mean() < (last - target).abs().mean(), "copying beats the oracle"


def test_a_recoloured_object_keeps_its_old_colour_in_the_oracle(tmp_path: Path) -> None:
    """With recolouring as the only event: where the oracle frame differs from the target, the oracle shows
    the object's old colour and the target its new one; the oracle caption names the old colour, no event."""
    batch, captions = windows_of(tmp_path, p_appear=0.0, p_leave=0.0, p_recolour=1.0)
    source = SyntheticWorld(num_stories=COUNTS, story_length=6, seed=1, p_appear=0.0, p_leave=0.0, p_recolour=1.0)
    oracle = source.load()["val"].oracle
    oracle_captions = dict(zip(oracle.index.tolist(), oracle.captions))
    for j, target in enumerate(batch["frame_index"][:, -1].tolist()):
        old, shape, new = re.search(r"the (\w+) (\w+) turns (\w+) \.", captions[target]).groups()
        differs = (batch["oracle_frame"][j] != batch["target_frame"][j]).any(dim=0)  # (H, W)
        assert differs.any()
        assert (batch["oracle_frame"][j][:, differs] == torch.tensor(COLOURS[old])[:, None]).all()
        assert (batch["target_frame"][j][:, differs] == torch.tensor(COLOURS[new])[:, None]).all()
        objects = captions[target].split(" the ")[0]
        one_recoloured = {objects[: m.start()] + f"{old} {shape}" + objects[m.end() :]
                          for m in re.finditer(f"{new} {shape}", objects)}  # any one of the same name
        assert oracle_captions[target] in one_recoloured
    assert len(set(WORLD_SHA256.values())) == len(WORLD_SHA256), "two versions pinned to one world"


def test_each_cell_is_labelled_with_the_region_its_caption_gives_the_object_drawn_there() -> None:
    """With one object a story: every frame's labels are that object's region as its caption names it (row,
    column) and NO_OBJECT elsewhere, at exactly the cells whose centre the object covers, read off the frame
    itself (the four pixels around the centre: all of the object's colour means covered, none means not)."""
    source = SyntheticWorld(num_stories=COUNTS, story_length=6, seed=3, max_objects=1, p_appear=0.0)
    data = source.load()["train"]
    assert data.regions.shape == (len(data.frames), REGION_GRID, REGION_GRID) and data.regions.dtype == np.uint8
    size = 64 // REGION_GRID
    checked = 0
    for frame, caption, labels in zip(data.frames, data.captions, data.regions):
        colour, _, row, col = caption.split()[:4]
        region = ROWS.index(row) * 3 + COLS.index(col)
        assert set(np.unique(labels)) <= {region, NO_OBJECT}
        for i in range(REGION_GRID):
            for j in range(REGION_GRID):
                block = frame[:, i * size + size // 2 - 1 : i * size + size // 2 + 1,
                              j * size + size // 2 - 1 : j * size + size // 2 + 1]
                painted = (block == np.asarray(COLOURS[colour], np.uint8)[:, None, None]).all(axis=0)
                if painted.all():
                    assert labels[i, j] == region, (caption, i, j)
                    checked += 1
                elif not painted.any():
                    assert labels[i, j] == NO_OBJECT, (caption, i, j)
    assert checked > 2 * len(data.frames)


def test_the_region_labels_reach_the_batches_through_the_cache(tmp_path: Path) -> None:
    """A window's batch carries the labels of its last context frame and its target, as the world gives them."""
    batch, _ = windows_of(tmp_path)
    source = SyntheticWorld(num_stories=COUNTS, story_length=6, seed=1)
    labels = torch.from_numpy(np.concatenate([source.regions(1, i) for i in range(COUNTS["val"])]))
    assert torch.equal(batch["regions"], labels[batch["frame_index"][:, -2:]].long())
