"""Word-level caption tokenizer, built on the train split only and saved with every run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


class CaptionTokenizer:
    """Maps captions to ids `w1 .. wn <eos>` and back; ids 0-3 are pad/bos/eos/unk."""

    def __init__(self, vocab: list[str]) -> None:
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, captions: list[str], min_count: int = 1) -> CaptionTokenizer:
        """Vocabulary of the words seen at least `min_count` times, most frequent first."""
        counts = Counter(w for c in captions for w in c.split())
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, caption: str, max_len: int) -> list[int]:
        """Ids of `caption` followed by <eos>, truncated to `max_len` (the <eos> is kept)."""
        ids = [self.index.get(w, UNK_ID) for w in caption.split()][: max_len - 1]
        return ids + [EOS_ID]

    def encode_batch(self, captions: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, max_len) int64 ids padded with <pad>, and (N,) lengths counting the <eos>."""
        tokens = np.full((len(captions), max_len), PAD_ID, np.int64)
        lengths = np.zeros(len(captions), np.int64)
        for i, caption in enumerate(captions):
            ids = self.encode(caption, max_len)
            tokens[i, : len(ids)] = ids
            lengths[i] = len(ids)
        return tokens, lengths

    def decode(self, ids: list[int]) -> str:
        """Words up to the first <eos>, skipping pad and bos."""
        words = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self.vocab[i] if 0 <= i < len(self.vocab) else UNK)
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab": self.vocab}, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> CaptionTokenizer:
        return cls(json.loads(Path(path).read_text())["vocab"])
