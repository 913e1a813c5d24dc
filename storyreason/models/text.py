"""Caption encoder: token ids -> per-token states and a summary vector (padding-aware GRU)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from storyreason.data.tokenizer import PAD_ID


class CaptionEncoder(nn.Module):
    """Embedding + GRU over `w1 .. wn <eos>`; padding never enters the recurrence.

    Bidirectional, each direction is half as wide and a token's state is both directions' side by side:
    it then tells what its whole sentence says (a direction word knows the region and the colour written
    after it), which a decoder reading that caption can use.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, bidirectional: bool = False) -> None:
        super().__init__()
        if bidirectional and hidden_dim % 2:
            raise ValueError(f"a bidirectional caption encoder needs an even width, got {hidden_dim}")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(embed_dim, hidden_dim // (1 + bidirectional), batch_first=True, bidirectional=bidirectional)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, L), lengths (N,) -> states (N, L, H) (zero at padding), summary (N, H)."""
        packed = pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.gru(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return states, torch.cat(list(hidden[-1 - self.gru.bidirectional:]), dim=-1)
