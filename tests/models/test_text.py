"""Caption encoder: padding never enters the recurrence."""

from __future__ import annotations

import torch

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from storyreason.models.text import CaptionEncoder


def test_padding_does_not_change_the_summary_or_the_states() -> None:
    """The same caption with 2 or 6 pads gives the same summary; states at padding are zero."""
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=12, embed_dim=8, hidden_dim=16).eval()
    short = torch.tensor([[5, 6, 7, EOS_ID, PAD_ID, PAD_ID]])
    long = torch.tensor([[5, 6, 7, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    lengths = torch.tensor([4])
    states_short, summary_short = encoder(short, lengths)
    states_long, summary_long = encoder(long, lengths)
    torch.testing.assert_close(summary_short, summary_long)
    torch.testing.assert_close(states_short[:, :4], states_long[:, :4])
    assert states_long.shape == (1, 10, 16)
    assert (states_long[:, 4:] == 0).all()
    torch.testing.assert_close(summary_short, states_short[:, 3])
