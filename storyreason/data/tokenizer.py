"""Caption tokenizers: word-level (default) or BPE subwords (Hugging Face `tokenizers`).

Both normalise captions the same way (Unicode NFKC, curly quotes made straight, optionally lower
case, whitespace folded), are fitted on the train split only, offline, and are saved as one JSON
string: in the run directory (`tokenizer.json`) and in the stage-2 checkpoint's hyperparameters, so
evaluate/predict need nothing else. Ids 0-3 are always <pad>, <bos>, <eos>, <unk>. Both decode to
the normalised text they were given (up to <unk>s), so text metrics of generated captions do not
depend on the tokenizer.

- `word`: words and punctuation marks are separate tokens ("room," is `room` `,`); apostrophes and
  hyphens inside a word stay in it (`Sarah's`, `twenty-one`), and so do the points of numbers
  (`3.5`). A mark written without a space before or after it carries a joiner `￭` on that side
  (`room,` is `room` `￭,`; `the—door` is `the` `￭—￭` `door`), so decoding restores the spacing.
  The vocabulary keeps words seen `min_count` times or more, at most `max_size` entries, most
  frequent first; the rest is <unk>.
- `bpe`: byte-pair subwords (a leading `▁` marks a word's start, punctuation split off), `max_size`
  entries in all; only characters never seen in training become <unk>.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from storyreason.errors import ConfigError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
KINDS = ("word", "bpe")
BPE_DEFAULT_SIZE = 8000
JOINER = "\uffed"  # ￭, as OpenNMT marks a token written without a space on that side

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
# a number with its points or commas, a word with its inner apostrophes and hyphens, or one mark
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:['\-]\w+)*|[^\w\s]")
_JOINED = re.compile(f" ?{JOINER}+ ?")  # a joiner and the spaces beside it, removed when decoding


def normalize_text(text: str, lowercase: bool = False) -> str:
    """NFKC, straight quotes, optionally lower case, whitespace folded to single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    return " ".join((text.lower() if lowercase else text).split())


class CaptionTokenizer:
    """Captions to ids `t1 .. tn <eos>` and back. `fit` makes one on train captions, `from_json` restores one."""

    kind = ""

    def __init__(self, vocab: Sequence[str], lowercase: bool) -> None:
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.vocab = list(vocab)
        self.lowercase = lowercase

    @staticmethod
    def fit(captions: Sequence[str], kind: str = "word", lowercase: bool = False, min_count: int = 1,
            max_size: int | None = None) -> CaptionTokenizer:
        """A tokenizer fitted on `captions` (the train split's)."""
        if kind not in KINDS:
            raise ConfigError(f"data.tokenizer must be one of {KINDS}, got {kind!r}")
        texts = [normalize_text(c, lowercase) for c in captions]
        if kind == "bpe":
            return SubwordTokenizer.train(texts, lowercase, min_count, max_size or BPE_DEFAULT_SIZE)
        counts = Counter(token for text in texts for token in word_tokens(text))
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(max_size - len(SPECIALS), 0)]
        return WordTokenizer([*SPECIALS, *words], lowercase)

    @staticmethod
    def from_json(state: str) -> CaptionTokenizer:
        """The tokenizer `to_json` wrote."""
        fields = json.loads(state)
        if fields.get("kind") == "bpe":
            return SubwordTokenizer(Tokenizer.from_str(fields["tokenizer"]), fields["lowercase"])
        return WordTokenizer(fields["vocab"], fields["lowercase"], fields.get("split_punctuation", True))

    def to_json(self) -> str:
        """The whole fitted tokenizer as one JSON string (plain, so a checkpoint can hold it)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> CaptionTokenizer:
        return cls.from_json(Path(path).read_text())

    def __len__(self) -> int:
        return len(self.vocab)

    def normalize(self, caption: str) -> str:
        """The caption as this tokenizer reads it: the text generated captions are scored against."""
        return normalize_text(caption, self.lowercase)

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]:
        """Untruncated ids of each caption, without <eos>."""
        raise NotImplementedError

    def unknown(self, captions: Sequence[str]) -> list[str]:
        """The pieces of `captions` this tokenizer reads as <unk> (words, or characters for BPE), sorted."""
        raise NotImplementedError

    def _text(self, ids: list[int]) -> str:
        raise NotImplementedError

    def encode(self, caption: str, max_len: int) -> list[int]:
        """Ids of `caption` followed by <eos>, truncated to `max_len` (the <eos> is kept)."""
        return self.token_ids([caption])[0][: max_len - 1] + [EOS_ID]

    def encode_batch(self, captions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, max_len) int64 ids padded with <pad>, and (N,) lengths counting the <eos>."""
        return pad_captions(self.token_ids(captions), max_len)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids up to the first <eos>, skipping pad and bos; <unk> shows as `<unk>` in word
        captions and is dropped from subword ones."""
        kept = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                kept.append(i if 0 <= i < len(self.vocab) else UNK_ID)
        return self._text(kept)


def word_tokens(text: str) -> list[str]:
    """Word tokens of normalised text: words and numbers as they are, marks with joiners where no space is."""
    tokens = []
    for match in _TOKEN.finditer(text):
        token, start, end = match.group(), match.start(), match.end()
        if not (token[0].isalnum() or token[0] == "_"):
            left = JOINER if start > 0 and not text[start - 1].isspace() else ""
            right = JOINER if end < len(text) and not text[end].isspace() else ""
            token = left + token + right
        tokens.append(token)
    return tokens


class WordTokenizer(CaptionTokenizer):
    """Words and punctuation marks (see the module docstring); `split_punctuation=False` splits on
    whitespace alone, as vocabularies saved before the prose pipeline were built."""

    kind = "word"

    def __init__(self, vocab: Sequence[str], lowercase: bool = False, split_punctuation: bool = True) -> None:
        super().__init__(vocab, lowercase)
        self.split_punctuation = split_punctuation
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "lowercase": self.lowercase, "split_punctuation": self.split_punctuation,
                           "vocab": self.vocab})

    def _tokens(self, caption: str) -> list[str]:
        text = self.normalize(caption)
        return word_tokens(text) if self.split_punctuation else text.split()

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]:
        return [[self.index.get(t, UNK_ID) for t in self._tokens(c)] for c in captions]

    def unknown(self, captions: Sequence[str]) -> list[str]:
        return sorted({t.strip(JOINER) for c in captions for t in self._tokens(c) if t not in self.index})

    def _text(self, ids: list[int]) -> str:
        return _JOINED.sub("", " ".join(self.vocab[i] for i in ids))


class SubwordTokenizer(CaptionTokenizer):
    """BPE subwords over a Hugging Face `tokenizers.Tokenizer`; captions are normalised before it."""

    kind = "bpe"

    def __init__(self, backend: Tokenizer, lowercase: bool = False) -> None:
        vocab = backend.get_vocab()
        super().__init__([t for t, _ in sorted(vocab.items(), key=lambda item: item[1])], lowercase)
        self.backend = backend

    @classmethod
    def train(cls, texts: Sequence[str], lowercase: bool, min_count: int, size: int) -> SubwordTokenizer:
        backend = Tokenizer(BPE(unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        backend.decoder = decoders.Metaspace()
        trainer = BpeTrainer(vocab_size=size, min_frequency=min_count, special_tokens=list(SPECIALS), show_progress=False)
        backend.train_from_iterator(texts, trainer)
        return cls(backend, lowercase)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "lowercase": self.lowercase, "tokenizer": self.backend.to_str()})

    def _encodings(self, captions: Sequence[str]) -> tuple[list[str], list]:
        texts = [self.normalize(c) for c in captions]
        return texts, self.backend.encode_batch(texts, add_special_tokens=False)

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._encodings(captions)[1]]

    def unknown(self, captions: Sequence[str]) -> list[str]:
        texts, encodings = self._encodings(captions)
        return sorted({text[start:end] for text, e in zip(texts, encodings)
                       for i, (start, end) in zip(e.ids, e.offsets) if i == UNK_ID})

    def _text(self, ids: list[int]) -> str:
        return " ".join(self.backend.decode(ids, skip_special_tokens=True).split())


def pad_captions(token_ids: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Untruncated ids -> (N, max_len) int64 ids `t1 .. <eos>` padded with <pad>, and (N,) lengths counting
    the <eos>; a caption longer than `max_len - 1` tokens is cut and keeps its <eos>."""
    tokens = np.full((len(token_ids), max_len), PAD_ID, np.int64)
    lengths = np.zeros(len(token_ids), np.int64)
    for i, ids in enumerate(token_ids):
        ids = list(ids[: max_len - 1]) + [EOS_ID]
        tokens[i, : len(ids)] = ids
        lengths[i] = len(ids)
    return tokens, lengths


def caption_length(lengths: np.ndarray, coverage: float) -> int:
    """The smallest caption length (tokens, <eos> included) that holds `coverage` of the given lengths whole."""
    if not 0 < coverage <= 1:
        raise ConfigError(f"data.caption_coverage must be in (0, 1], got {coverage}")
    if len(lengths) == 0:
        return 2
    return max(int(np.sort(lengths)[max(math.ceil(coverage * len(lengths)) - 1, 0)]), 2)
