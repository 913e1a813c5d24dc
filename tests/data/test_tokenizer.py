"""Caption tokenizers: round trip, <unk>, vocabulary policy, truncation that keeps <eos>, prose, save and restore."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from storyreason.data.tokenizer import (
    BOS_ID, EOS_ID, JOINER, PAD_ID, SPECIALS, UNK, UNK_ID, CaptionTokenizer, WordTokenizer, caption_length,
)

TRAIN = ["red circle top left up right .", "a blue square appears .", "the red circle turns blue ."]
PROSE = [
    '"Wait," Sarah said. "Don\'t leave the room, not yet!"',
    "Sarah's brother walked into the room; the twenty-one candles flickered.",
    "He paid 3.5 dollars (10,000 in all) and left the room.",
    "The room was quiet? Sarah waited, then walked out.",
]


def glued(token: str) -> bool:
    """A word with punctuation stuck to it ("room," or '"Wait'); inner apostrophes and hyphens are part of words."""
    return bool(re.search(r"\w", token)) and bool(re.search(r"[^\w'\-.,]|^[.,'\-]|[.,'\-]$", token))


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_specials_have_fixed_ids(kind: str) -> None:
    tokenizer = CaptionTokenizer.fit(PROSE, kind, max_size=120 if kind == "bpe" else None)
    assert tuple(tokenizer.vocab[:4]) == SPECIALS
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)


def test_word_captions_round_trip_as_word_tokens() -> None:
    tokenizer = CaptionTokenizer.fit(TRAIN)
    for caption in TRAIN:
        ids = tokenizer.encode(caption, max_len=32)
        assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
        assert len(ids) == len(caption.split()) + 1
        assert tokenizer.decode(ids) == caption
    assert sorted(tokenizer.vocab[4:]) == sorted({w for c in TRAIN for w in c.split()})


def test_punctuation_is_split_off_words_and_words_keep_apostrophes_hyphens_and_numbers() -> None:
    tokenizer = CaptionTokenizer.fit(PROSE)
    words = tokenizer.vocab[4:]
    assert not [w for w in words if glued(w)]
    for word in ["room", "Sarah's", "Don't", "twenty-one", "3.5", "10,000"]:
        assert words.count(word) == 1
    marks = {w.strip(JOINER) for w in words if not w[-1].isalnum()}
    assert {",", ".", '"', "(", ")", ";", "?", "!"} <= marks


def test_joiners_mark_where_a_mark_touches_a_word() -> None:
    tokenizer = CaptionTokenizer.fit(["the room, then the\u2014door (ok) and . spaced"])
    ids = tokenizer.encode("the room, then the\u2014door (ok) and . spaced", 32)
    tokens = [tokenizer.vocab[i] for i in ids[:-1]]
    assert tokens == ["the", "room", JOINER + ",", "then", "the", JOINER + "\u2014" + JOINER, "door", "(" + JOINER, "ok",
                      JOINER + ")", "and", ".", "spaced"]


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_prose_decodes_to_its_normalised_text(kind: str) -> None:
    """Captions made of training words come back as written (word tokens re-attach punctuation)."""
    tokenizer = CaptionTokenizer.fit(PROSE, kind, max_size=300 if kind == "bpe" else None)
    for caption in PROSE:
        assert tokenizer.decode(tokenizer.encode(caption, 200)) == tokenizer.normalize(caption)


def test_unseen_word_is_unk() -> None:
    tokenizer = CaptionTokenizer.fit(TRAIN)
    ids = tokenizer.encode("a purple square appears .", max_len=32)
    assert ids[1] == UNK_ID and ids.count(UNK_ID) == 1
    assert tokenizer.decode(ids) == f"a {UNK} square appears ."


def test_vocabulary_policy_min_count_and_max_size() -> None:
    captions = ["a a a b b c", "a b d"]
    assert CaptionTokenizer.fit(captions).vocab[4:] == ["a", "b", "c", "d"]  # most frequent first, ties by name
    assert CaptionTokenizer.fit(captions, min_count=2).vocab[4:] == ["a", "b"]
    assert CaptionTokenizer.fit(captions, max_size=5).vocab[4:] == ["a"]
    assert CaptionTokenizer.fit(captions, max_size=5).encode("b", 4)[0] == UNK_ID


def test_lowercase_option() -> None:
    tokenizer = CaptionTokenizer.fit(["The Room", "the room"], lowercase=True)
    assert tokenizer.vocab[4:] == ["room", "the"]
    assert tokenizer.normalize("The  ROOM") == "the room"


def test_bpe_has_the_asked_size_and_only_unseen_characters_are_unk() -> None:
    tokenizer = CaptionTokenizer.fit(PROSE * 3, "bpe", max_size=150)
    assert 100 < len(tokenizer) <= 150  # fewer only when no pair is left to merge
    ids = tokenizer.encode("Sarah waited in the rooms", 64)
    assert UNK_ID not in ids  # an unseen word is spelled with subwords
    assert tokenizer.decode(ids) == "Sarah waited in the rooms"
    assert UNK_ID in tokenizer.encode("Sarah 😀", 64)


@pytest.mark.parametrize("kind", ["word", "bpe"])
@pytest.mark.parametrize(
    "caption",
    [
        "",                                              # an empty span
        "   ",                                           # tags only: nothing left after stripping them
        "\u201cCurly,\u201d she said \u2014 \u2018fine\u2019.",   # curly quotes and an em-dash
        "Zo\u00eb ordered a caf\u00e9 cr\u00e8me br\u00fbl\u00e9e.",  # accents (composed and decomposed alike)
        "word " * 3000,                                  # a very long paragraph
    ],
)
def test_prose_edge_cases_give_a_caption_not_a_crash(kind: str, caption: str) -> None:
    tokenizer = CaptionTokenizer.fit(PROSE + [caption], kind, max_size=200 if kind == "bpe" else None)
    tokens, lengths = tokenizer.encode_batch([caption], max_len=16)
    assert 1 <= lengths[0] <= 16 and tokens[0, lengths[0] - 1] == EOS_ID
    assert isinstance(tokenizer.decode(tokens[0].tolist()), str)


def test_curly_quotes_and_compatibility_forms_are_normalised() -> None:
    tokenizer = CaptionTokenizer.fit(["\u201cHi\u201d, Sarah\u2019s \ufb01le"])
    assert tokenizer.normalize("\u201cHi\u201d, Sarah\u2019s \ufb01le") == '"Hi", Sarah\'s file'
    assert "Sarah's" in tokenizer.vocab and "file" in tokenizer.vocab  # NFKC: the "fi" ligature is two letters
    assert tokenizer.unknown(["Sarah\u2019s new \ufb01le"]) == ["new"]


def test_truncation_keeps_eos() -> None:
    tokenizer = CaptionTokenizer.fit(TRAIN)
    ids = tokenizer.encode(TRAIN[0], max_len=4)  # 7 tokens
    assert len(ids) == 4 and ids[-1] == EOS_ID
    assert tokenizer.decode(ids) == " ".join(TRAIN[0].split()[:3])


def test_encode_batch_pads_and_counts_eos_in_lengths() -> None:
    tokenizer = CaptionTokenizer.fit(TRAIN)
    tokens, lengths = tokenizer.encode_batch([*TRAIN, "red ."], max_len=7)
    assert tokens.shape == (4, 7)
    assert lengths.tolist() == [7, 6, 7, 3]  # 7 tokens cut to 6 + <eos>; 5 + <eos>; 6 + <eos>; 2 + <eos>
    assert tokens[0, 6] == EOS_ID
    assert tokens[3, 2] == EOS_ID and (tokens[3, 3:] == PAD_ID).all()
    assert tokens[1, 5] == EOS_ID and tokens[1, 6] == PAD_ID


def test_decode_stops_at_eos_and_skips_pad_and_bos() -> None:
    tokenizer = CaptionTokenizer.fit(TRAIN)
    red, circle = tokenizer.vocab.index("red"), tokenizer.vocab.index("circle")
    assert tokenizer.decode([BOS_ID, red, PAD_ID, circle, EOS_ID, red]) == "red circle"


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_save_and_restore_give_the_same_ids(tmp_path: Path, kind: str) -> None:
    tokenizer = CaptionTokenizer.fit(PROSE, kind, max_size=150 if kind == "bpe" else None)
    tokenizer.save(tmp_path / "tokenizer.json")
    restored = CaptionTokenizer.load(tmp_path / "tokenizer.json")
    assert restored.vocab == tokenizer.vocab and restored.kind == kind
    for caption in [*PROSE, "an unseen caption, with Zo\u00eb."]:
        assert restored.encode(caption, 64) == tokenizer.encode(caption, 64)


def test_vocabulary_without_the_specials_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["red", "circle"])


def test_unknown_kind_names_the_key() -> None:
    with pytest.raises(ValueError, match="data.tokenizer"):
        CaptionTokenizer.fit(TRAIN, "chars")


def test_caption_length_covers_the_asked_share_whole() -> None:
    lengths = np.arange(1, 101)  # 1..100 tokens
    assert caption_length(lengths, 0.99) == 99
    assert caption_length(lengths, 1.0) == 100
    assert caption_length(lengths, 0.5) == 50
    assert (lengths <= caption_length(lengths, 0.9)).mean() >= 0.9
    with pytest.raises(ValueError, match="caption_coverage"):
        caption_length(lengths, 0.0)
