"""Caption encoder: token ids -> per-token states and a summary vector (padding-aware GRU)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from storyreason.data.tokenizer import PAD_ID


class CaptionEncoder(nn.Module):
    """Embedding + GRU over `w1 .. wn <eos>`; padding never reaches a word's state or the summary.

    Bidirectional, each direction is half as wide and a token's state is both directions' side by side:
    it then tells what its whole sentence says (a direction word knows the region and the colour written
    after it), which a decoder reading that caption can use.

    The GRUs run over the padded batch, not a packed sequence: a word's state depends only on the words
    before it (after it, read backward, each caption reversed within its length), so the states at the
    words are the packed ones, and the padding's are zeroed. It is faster to train: the backward pass of a
    packed GRU zero-fills a tensor of the whole batch's tokens at every time step (quadratic in the
    caption length), about a third of the encoder's time on the prose world's paragraphs.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, bidirectional: bool = False) -> None:
        super().__init__()
        if bidirectional and hidden_dim % 2:
            raise ValueError(f"a bidirectional caption encoder needs an even width, got {hidden_dim}")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        width = hidden_dim // (1 + bidirectional)
        self.gru = nn.GRU(embed_dim, width, batch_first=True)
        self.gru_reverse = nn.GRU(embed_dim, width, batch_first=True) if bidirectional else None

    @property
    def bidirectional(self) -> bool:
        """Whether captions are read both ways."""
        return self.gru_reverse is not None

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, L), lengths (N,) -> states (N, L, H) (zero at padding), summary (N, H): the forward
        pass's state at the last word and, read both ways, the backward pass's at the first."""
        x = self.embed(tokens)
        lengths = lengths.clamp(min=1).to(tokens.device)
        steps = torch.arange(tokens.shape[1], device=tokens.device)[None]
        words = steps < lengths[:, None]  # (N, L)
        forward, _ = self.gru(x)
        last = (lengths - 1)[:, None, None].expand(-1, 1, forward.shape[-1])
        summary = [forward.gather(1, last)[:, 0]]
        states = [forward]
        if self.gru_reverse is not None:  # each caption reversed within its length; padding stays in place
            order = torch.where(words, lengths[:, None] - 1 - steps, steps)[:, :, None]  # its own inverse
            backward, _ = self.gru_reverse(x.gather(1, order.expand(-1, -1, x.shape[-1])))
            backward = backward.gather(1, order.expand(-1, -1, backward.shape[-1]))
            summary.append(backward[:, 0])
            states.append(backward)
        return torch.cat(states, dim=-1) * words[..., None], torch.cat(summary, dim=-1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Checkpoints written before the two directions were two GRUs name the backward one's weights
        `gru.*_l0_reverse`; they load as `gru_reverse.*_l0`."""
        for key in [k for k in state_dict if k.startswith(f"{prefix}gru.") and k.endswith("_reverse")]:
            state_dict[f"{prefix}gru_reverse.{key[len(prefix) + 4:-len('_reverse')]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
