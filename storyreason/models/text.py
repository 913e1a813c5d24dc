"""Caption encoder: token ids -> per-token states and a summary vector (padding-aware GRU)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from storyreason.data.tokenizer import PAD_ID


class CaptionEncoder(nn.Module):
    """Embedding + GRU over `w1 .. wn <eos>`; padding never enters the recurrence."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(embed_dim, hidden_dim, batch_first=True)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, L), lengths (N,) -> states (N, L, H) (zero at padding), summary (N, H)."""
        packed = pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.gru(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return states, hidden[-1]
