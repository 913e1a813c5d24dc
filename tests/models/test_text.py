"""Caption encoder: padding never enters the recurrence; read both ways, a word's state knows what follows."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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


def packed_reference(encoder: CaptionEncoder, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What torch's packed (bidirectional) GRU gives with the encoder's weights: the encoder runs over the
    padded batch instead, for speed, and must give the same states and summary."""
    gru = nn.GRU(encoder.gru.input_size, encoder.gru.hidden_size, batch_first=True, bidirectional=encoder.bidirectional)
    with torch.no_grad():
        for name, weight in encoder.gru.named_parameters():
            getattr(gru, name).copy_(weight)
            if encoder.bidirectional:
                getattr(gru, f"{name}_reverse").copy_(getattr(encoder.gru_reverse, name))
    packed = pack_padded_sequence(encoder.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
    out, hidden = gru(packed)
    states, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
    return states, torch.cat(list(hidden), dim=-1)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_states_summary_and_gradients_are_those_of_a_packed_gru(bidirectional: bool) -> None:
    """Captions of 1 to 9 words in a batch padded to 9: the encoder's states, summary and weight gradients
    equal a packed GRU's with the same weights."""
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=30, embed_dim=8, hidden_dim=16, bidirectional=bidirectional)
    lengths = torch.tensor([9, 1, 5, 3, 9, 7])
    tokens = torch.randint(3, 30, (6, 9)).masked_fill(torch.arange(9)[None] >= lengths[:, None], PAD_ID)
    grads = []
    for run in (encoder, lambda t, n: packed_reference(encoder, t, n)):
        states, summary = run(tokens, lengths)
        grads.append(torch.autograd.grad((states.sin().sum() + summary.cos().sum()), encoder.embed.weight))
        grads[-1] += (states, summary)
    for ours, reference in zip(grads[0], grads[1]):
        torch.testing.assert_close(ours, reference)


def test_a_checkpoint_of_the_single_bidirectional_gru_loads() -> None:
    """Weights saved when both directions were one `nn.GRU(bidirectional=True)` load into the two GRUs."""
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=12, embed_dim=8, hidden_dim=16, bidirectional=True)
    old = {f"gru.{k.replace('_l0', '_l0_reverse')}": v for k, v in encoder.gru_reverse.state_dict().items()}
    old |= {"embed.weight": encoder.embed.weight, **{f"gru.{k}": v for k, v in encoder.gru.state_dict().items()}}
    fresh = CaptionEncoder(vocab_size=12, embed_dim=8, hidden_dim=16, bidirectional=True)
    fresh.load_state_dict({k: v.clone() for k, v in old.items()})
    for (name, ours), theirs in zip(fresh.state_dict().items(), encoder.state_dict().values()):
        assert torch.equal(ours, theirs), name
