"""Caption encoder: padding never enters the recurrence; read both ways, a word's state knows what follows."""

from __future__ import annotations

import pytest
import torch

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from storyreason.models.text import CaptionEncoder


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_the_summary_or_the_states(bidirectional: bool) -> None:
    """The same caption with 2 or 6 pads gives the same summary; states at padding are zero; the summary
    is the forward pass's state at the last word (and, read both ways, the backward pass's at the first)."""
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=12, embed_dim=8, hidden_dim=16, bidirectional=bidirectional).eval()
    short = torch.tensor([[5, 6, 7, EOS_ID, PAD_ID, PAD_ID]])
    long = torch.tensor([[5, 6, 7, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    lengths = torch.tensor([4])
    states_short, summary_short = encoder(short, lengths)
    states_long, summary_long = encoder(long, lengths)
    torch.testing.assert_close(summary_short, summary_long)
    torch.testing.assert_close(states_short[:, :4], states_long[:, :4])
    assert states_long.shape == (1, 10, 16)
    assert (states_long[:, 4:] == 0).all()
    forward = 8 if bidirectional else 16
    torch.testing.assert_close(summary_short[:, :forward], states_short[:, 3, :forward])
    torch.testing.assert_close(summary_short[:, forward:], states_short[:, 0, forward:])


@pytest.mark.parametrize("bidirectional", [False, True])
@torch.no_grad()
def test_a_words_state_knows_the_words_after_it_only_when_read_both_ways(bidirectional: bool) -> None:
    """Changing the last word changes the first word's state read both ways, and never read forward only."""
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=12, embed_dim=8, hidden_dim=16, bidirectional=bidirectional).eval()
    lengths = torch.tensor([4, 4])
    states, _ = encoder(torch.tensor([[5, 6, 7, EOS_ID], [5, 6, 9, EOS_ID]]), lengths)
    assert torch.equal(states[0, :2], states[1, :2]) != bidirectional
    assert not torch.equal(states[0, 2:], states[1, 2:])
