"""The LightningDataModule built from the real Hydra config: windows, splits, batches, tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from storyreason.data.datamodule import StoryDataModule
from storyreason.data.stories import SPLITS
from storyreason.data.tokenizer import CaptionTokenizer, WordTokenizer
from tests.conftest import compose_config


def datamodule(root: Path, stage: str = "multimodal", overrides: list[str] = ()) -> StoryDataModule:
    """The configured datamodule after prepare_data and setup."""
    dm = instantiate(compose_config(root, stage, overrides).data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> StoryDataModule:
    """The stage-2 datamodule of the tiny world, shared by this file."""
    return datamodule(tmp_path_factory.mktemp("dm"))


def test_windows_never_cross_stories(windows: StoryDataModule) -> None:
    for split in SPLITS:
        data = windows.splits[split]
        owner = np.repeat(np.arange(data.num_stories), data.story_lengths)
        index = windows.datasets[split].windows.numpy()
        assert len(index) > 0
        assert (owner[index] == owner[index[:, :1]]).all()
        assert (np.diff(index, axis=1) == 1).all()


def test_splits_share_no_story(windows: StoryDataModule) -> None:
    ids = {split: set(windows.story_ids(split)) for split in SPLITS}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]


def test_train_batch_shapes(windows: StoryDataModule) -> None:
    """Context (B, K, 3, 64, 64) uint8 frames and (B, K, L) captions; target (B, 3, 64, 64) and (B, L),
    L the batch's longest caption (at most data.max_caption_len)."""
    batch = next(iter(windows.train_dataloader()))
    b, k = 16, 4  # data.batch_size, data.context of the tiny config
    length = int(max(batch["context_lengths"].max(), batch["target_length"].max()))
    assert 1 <= length <= 24  # data.max_caption_len of the tiny config
    assert batch["context_frames"].shape == (b, k, 3, 64, 64)
    assert batch["context_frames"].dtype == batch["target_frame"].dtype == torch.uint8
    assert batch["context_captions"].shape == (b, k, length)
    assert batch["context_lengths"].shape == (b, k)
    assert batch["target_frame"].shape == (b, 3, 64, 64)
    assert batch["target_caption"].shape == (b, length)
    assert batch["target_length"].shape == (b,)


def test_target_differs_from_the_last_context_frame(windows: StoryDataModule) -> None:
    batch = windows.val_dataloader().dataset.__getitems__(list(range(len(windows.datasets["val"]))))
    last, target = batch["context_frames"][:, -1].int(), batch["target_frame"].int()
    assert ((last - target).abs().flatten(1).amax(dim=1) > 0).all()


def own_word_stories(root: Path, caption_len: int, caplog: pytest.LogCaptureFixture) -> StoryDataModule:
    """A story folder whose story s says `w<s>` in every caption, followed by k times `x` in its frame k
    (k = 1..6), so each word of a story is its own; set up with data.max_caption_len=`caption_len`."""
    from storyreason.data.sources.folder import StoryFolder
    from tests.data.conftest import write_story_folder

    write_story_folder(root / "stories", stories=10)
    for s in range(10):
        for old in (root / "stories" / "captions").glob(f"story{s}.*"):
            old.unlink()
        (root / "stories" / "captions" / f"story{s}.txt").write_text("".join(f"w{s}" + " x" * k + "\n" for k in range(1, 7)))
    source = StoryFolder(path=str(root / "stories"), val_fraction=0.2, test_fraction=0.2, decode_workers=1)
    dm = StoryDataModule(source, context=2, max_caption_len=caption_len, cache_dir=str(root / "cache"))
    dm.prepare_data()
    with caplog.at_level("INFO", logger="storyreason.data.datamodule"):
        dm.setup("fit")
        dm.setup("test")
    return dm


def test_tokenizer_is_built_on_the_train_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only train stories' words are in the vocabulary; a val or test story's own word is <unk> there, and
    each split's <unk> rate and truncated share are those counts: of the 27 tokens of a story (without
    <eos>) its 6 `w<s>`, and of its 6 captions (k + 1 tokens and <eos>) the 2 longer than 6 tokens."""
    dm = own_word_stories(tmp_path, 6, caplog)
    own = {split: {f"w{sid.removeprefix('story')}" for sid in dm.splits[split].story_ids} for split in SPLITS}
    assert own["train"] <= set(dm.tokenizer.vocab) and not (own["val"] | own["test"]) & set(dm.tokenizer.vocab)
    assert dm.tokenizer.vocab == CaptionTokenizer.fit(dm.splits["train"].captions).vocab
    stats = dm.text_stats
    assert stats["train_unk_rate"] == 0 and stats["val_unk_rate"] == pytest.approx(6 / 27) == stats["test_unk_rate"]
    for split in SPLITS:
        assert stats[f"{split}_truncated_share"] == pytest.approx(2 / 6), split
    stories = len(dm.splits["train"].story_ids)
    assert f"train: 33.3% of {6 * stories} captions truncated to data.max_caption_len=6 tokens; 0.00% of tokens <unk>" in caplog.text
    assert "val: 33.3% of 12 captions truncated to data.max_caption_len=6 tokens; 22.22% of tokens <unk>" in caplog.text


def test_a_given_tokenizer_is_used_instead_of_a_new_one(windows: StoryDataModule, tmp_path: Path) -> None:
    """A checkpoint's tokenizer is restored as is, whatever the train split would give."""
    specials, words = windows.tokenizer.vocab[:4], windows.tokenizer.vocab[4:]
    vocab = specials + words[::-1]
    cfg = compose_config(tmp_path, "multimodal", [f"paths.cache={windows.cache_dir}"])
    dm = instantiate(cfg.data, tokenizer_state=WordTokenizer(vocab).to_json(), _convert_="all")
    dm.setup("fit")
    assert dm.tokenizer.vocab == vocab
    first = windows.splits["train"].captions[0]
    assert dm.datasets["train"].tokens[0].tolist()[: len(first.split())] == [vocab.index(w) for w in first.split()]


def test_context_and_stride_from_the_config(tmp_path: Path) -> None:
    """Stories of 6 frames with context 2 and stride 3: windows start at frames 0 and 3 of each story."""
    dm = datamodule(tmp_path, overrides=["data.context=2", "data.stride=3"])
    index = dm.datasets["train"].windows.numpy()
    assert index.shape == (24 * 2, 3)
    assert sorted(set((index[:, 0] % 6).tolist())) == [0, 3]


def test_stories_shorter_than_context_plus_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs stories of at least 7 frames"):
        datamodule(tmp_path, overrides=["data.context=6"])


def test_stage1_serves_every_train_frame(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, stage="pretrain_ae")
    assert len(dm.datasets["train"]) == 24 * 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (16, 3, 64, 64)


class _Strategy:
    def __init__(self, device: str) -> None:
        self.root_device = torch.device(device)


class _Trainer:
    """What the datamodule reads of a trainer to choose its loader settings: the device it trains on."""

    def __init__(self, device: str) -> None:
        self.strategy = _Strategy(device)


@pytest.mark.parametrize(
    ("device", "overrides", "moved", "pinned"),
    [
        ("cpu", [], False, False),
        ("cuda", [], True, None),  # resident=auto: batches gathered on the GPU, nothing to pin
        ("cuda", ["data.resident=false"], False, True),
        ("cuda", ["data.resident=false", "data.pin_memory=false"], False, False),
        ("cuda", ["data.num_workers=2"], False, True),  # auto stays on the host when workers gather the batches
    ],
)
def test_loader_settings_follow_the_trainer_device(
    windows: StoryDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, overrides: list[str],
    moved: bool, pinned: bool | None,
) -> None:
    dm = instantiate(compose_config(tmp_path, "multimodal", overrides).data,
                     tokenizer_state=windows.tokenizer.to_json(), _convert_="all")
    dm.cache_dir = windows.cache_dir
    targets = []
    monkeypatch.setattr(dm, "to_device", targets.append)
    dm.trainer = _Trainer(device)
    dm.setup("fit")
    assert targets == ([torch.device(device)] if moved else [])
    if pinned is not None:
        assert dm._pin_memory("train") is pinned


def test_to_device_moves_every_split(tmp_path: Path) -> None:
    dm = datamodule(tmp_path)
    dm.to_device("meta")
    for split in SPLITS:
        data = dm.datasets[split]
        assert data.frames is dm.frames[split]
        assert {t.device.type for t in (data.frames, data.tokens, data.lengths, data.windows)} == {"meta"}


@pytest.mark.parametrize(("overrides", "culprit"), [
    (["data.resident=maybe"], "data.resident"),
    (["data.resident=true", "data.num_workers=2"], "data.num_workers"),
])
def test_bad_loader_settings_are_refused(tmp_path: Path, overrides: list[str], culprit: str) -> None:
    with pytest.raises(InstantiationException, match=culprit):
        instantiate(compose_config(tmp_path, "multimodal", overrides).data, _convert_="all")
