"""Caption tokenizer: round trip, <unk>, truncation that keeps <eos>, save and restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyreason.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK, UNK_ID, CaptionTokenizer

TRAIN = ["red circle top left up right .", "a blue square appears .", "the red circle turns blue ."]


def test_encode_decode_round_trip() -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    for caption in TRAIN:
        ids = tokenizer.encode(caption, max_len=32)
        assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
        assert len(ids) == len(caption.split()) + 1
        assert tokenizer.decode(ids) == caption


def test_vocabulary_starts_with_the_specials_and_has_each_train_word_once() -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    assert tuple(tokenizer.vocab[:4]) == SPECIALS
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    words = {w for c in TRAIN for w in c.split()}
    assert sorted(tokenizer.vocab[4:]) == sorted(words)


def test_unseen_word_is_unk() -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    ids = tokenizer.encode("a purple square appears .", max_len=32)
    assert ids[1] == UNK_ID
    assert ids.count(UNK_ID) == 1
    assert tokenizer.decode(ids) == f"a {UNK} square appears ."


def test_truncation_keeps_eos() -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    caption = TRAIN[0]  # 7 words
    ids = tokenizer.encode(caption, max_len=4)
    assert len(ids) == 4 and ids[-1] == EOS_ID
    assert tokenizer.decode(ids) == " ".join(caption.split()[:3])


def test_encode_batch_pads_and_counts_eos_in_lengths() -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    tokens, lengths = tokenizer.encode_batch([*TRAIN, "red ."], max_len=7)
    assert tokens.shape == (4, 7)
    assert lengths.tolist() == [7, 6, 7, 3]  # 7 words cut to 6 + <eos>; 5 + <eos>; 6 + <eos>; 2 + <eos>
    assert tokens[0, 6] == EOS_ID
    assert tokens[3, 2] == EOS_ID and (tokens[3, 3:] == PAD_ID).all()
    assert tokens[1, 5] == EOS_ID and tokens[1, 6] == PAD_ID


def test_decode_stops_at_eos_and_skips_pad_and_bos() -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    red, circle = tokenizer.index["red"], tokenizer.index["circle"]
    assert tokenizer.decode([BOS_ID, red, PAD_ID, circle, EOS_ID, red]) == "red circle"


def test_save_and_restore_give_the_same_ids(tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.build(TRAIN)
    tokenizer.save(tmp_path / "vocab.json")
    restored = CaptionTokenizer.load(tmp_path / "vocab.json")
    assert restored.vocab == tokenizer.vocab
    for caption in [*TRAIN, "an unseen caption ."]:
        assert restored.encode(caption, 32) == tokenizer.encode(caption, 32)
    assert CaptionTokenizer(tokenizer.vocab).encode(TRAIN[1], 32) == tokenizer.encode(TRAIN[1], 32)


def test_vocabulary_without_the_specials_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with"):
        CaptionTokenizer(["red", "circle"])
