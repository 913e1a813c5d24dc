"""Beam search: beam 1 is greedy, results are deterministic, a wide enough beam finds the best caption."""

from __future__ import annotations

import itertools

import pytest
import torch

from storyreason.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from storyreason.models.decoding import beam_search, decode_captions, top_k_stable
from storyreason.models.story import StoryEncoding, StoryModel, mask_after_eos

LATENT = (2, 2, 2)
SIZES = dict(embed_dim=8, text_dim=8, fusion_dim=16, state_dim=16, decoder_dim=16, heads=2, latent_hidden=4)


def encoding(vocab: int, max_len: int, batch: int = 5, seed: int = 0) -> tuple[StoryModel, StoryEncoding]:
    """A random model and the encoding of a random 3-frame context."""
    torch.manual_seed(seed)
    model = StoryModel(vocab, LATENT, max_len, **SIZES).eval()
    captions = torch.randint(4, vocab, (batch, 3, max_len))
    lengths = torch.full((batch, 3), max_len)
    with torch.no_grad():
        return model, model.encode(torch.randn(batch, 3, 8), captions, lengths)


def log_prob(model: StoryModel, enc: StoryEncoding, tokens: torch.Tensor) -> torch.Tensor:
    """Summed log-probability (B,) of captions (B, T) up to and including their first <eos>."""
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS_ID), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logits, _ = model.caption(inputs, enc.state, enc.memory, enc.memory_pad)
    token_lp = logits.double().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    ended = (tokens == EOS_ID).long().cumsum(dim=1) - (tokens == EOS_ID).long() > 0
    return token_lp.masked_fill(ended, 0.0).sum(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_one_is_greedy(seed: int) -> None:
    model, enc = encoding(vocab=20, max_len=10, batch=16, seed=seed)
    greedy = model.generate(enc)
    assert torch.equal(beam_search(model, enc, beam_size=1), greedy)
    assert torch.equal(decode_captions(model, enc, beam_size=1), greedy)


def test_beam_search_is_deterministic_and_shaped_like_greedy() -> None:
    model, enc = encoding(vocab=20, max_len=10)
    first = beam_search(model, enc, beam_size=4, max_len=7)
    assert torch.equal(first, beam_search(model, enc, beam_size=4, max_len=7))
    assert first.shape == (5, 7)
    assert torch.equal(first, mask_after_eos(first)), "ids after the first <eos> must be <pad>"


def test_a_beam_as_wide_as_all_captions_finds_the_most_likely_one() -> None:
    """With beam_size >= V ** T every caption of up to T tokens is kept, so the result is the exact optimum."""
    vocab, max_len = 6, 3
    model, enc = encoding(vocab=vocab, max_len=max_len, batch=3)
    every = torch.tensor(list(itertools.product(range(vocab), repeat=max_len)))  # (V^T, T)
    every = torch.unique(mask_after_eos(every), dim=0)
    best = torch.stack([log_prob(model, _one(enc, i, len(every)), every).max() for i in range(3)])
    found = beam_search(model, enc, beam_size=vocab**max_len)
    assert torch.allclose(log_prob(model, enc, found), best, atol=1e-9)


def _one(enc: StoryEncoding, i: int, n: int) -> StoryEncoding:
    """Story i of `enc`, repeated n times."""
    return StoryEncoding(*(None if t is None else t[i : i + 1].expand(n, *t.shape[1:]) for t in vars(enc).values()))


def caption_length(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens up to and including the first <eos> (B,), at least 1: the length the penalty divides by."""
    return (mask_after_eos(tokens) != PAD_ID).sum(dim=1).clamp(min=1)


def test_length_penalty_picks_the_final_hypothesis_with_the_best_score_per_length() -> None:
    """Without a penalty the pick is the most likely caption of the final beam; with length_penalty a it is
    the one with the best log-prob / length ** a, so a changed pick is strictly longer and less likely."""
    model, enc = encoding(vocab=20, max_len=10, batch=32)
    with torch.no_grad():  # <eos> about as likely as a word, so captions of every length compete
        model.caption.head[-1].bias[EOS_ID] += 2.0
    plain = beam_search(model, enc, beam_size=4)
    favoured = beam_search(model, enc, beam_size=4, length_penalty=2.0)
    changed = (plain != favoured).any(dim=1)
    assert changed.any(), "length_penalty=2 changed no pick of 32 stories"
    plain_lp, favoured_lp = log_prob(model, enc, plain), log_prob(model, enc, favoured)
    plain_len, favoured_len = caption_length(plain), caption_length(favoured)
    assert bool((favoured_len[changed] > plain_len[changed]).all())
    assert bool((favoured_lp[changed] < plain_lp[changed]).all())
    assert bool((favoured_lp / favoured_len.double() ** 2 >= plain_lp / plain_len.double() ** 2 - 1e-12).all())


def test_decode_captions_decodes_with_the_beam_it_is_given() -> None:
    model, enc = encoding(vocab=20, max_len=10, batch=16)
    beam = decode_captions(model, enc, beam_size=4)
    assert torch.equal(beam, beam_search(model, enc, beam_size=4))
    assert not torch.equal(beam, model.generate(enc)), "a beam of 4 decoded 16 stories exactly as greedy does"


def test_max_len_beyond_the_decoder_positions_is_refused() -> None:
    model, enc = encoding(vocab=20, max_len=10)
    with pytest.raises(ValueError, match="positions"):
        beam_search(model, enc, beam_size=2, max_len=50)


def test_argmax_last_is_torch_argmax_first_maximum_on_ties() -> None:
    from storyreason.models.story import argmax_last

    torch.manual_seed(0)
    x = torch.randn(6, 5, 40)
    x[0, 0, [3, 7]] = 10.0  # a tie: the first maximum wins, as torch.argmax documents
    assert torch.equal(argmax_last(x), x.argmax(-1))
    assert argmax_last(x)[0, 0].item() == 3
    assert torch.equal(argmax_last(x[:, -1]), x[:, -1].argmax(-1))  # strided views too
    with torch.inference_mode():
        assert torch.equal(argmax_last(x.clone()), x.argmax(-1))


def sorted_beam_search(model: StoryModel, enc: StoryEncoding, k: int, max_len: int) -> torch.Tensor:
    """The beam search as it was before `top_k_stable`: float64 log-softmax over the vocabulary and a stable
    sort of all k * V candidates at every step, each hypothesis with its own copy of the memory."""
    b = len(enc.state)
    state, memory, memory_pad = (x.repeat_interleave(k, dim=0) for x in (enc.state, enc.memory, enc.memory_pad))
    scores = torch.full((b, k), float("-inf"), dtype=torch.float64)
    scores[:, 0] = 0.0
    token = torch.full((b * k, 1), BOS_ID)
    tokens = torch.zeros(b * k, 0, dtype=torch.long)
    finished = torch.zeros(b * k, dtype=torch.bool)
    hidden = None
    for t in range(max_len):
        with torch.no_grad():
            logits, hidden = model.caption(token, state, memory, memory_pad, hidden, start=t)
        log_probs = logits[:, -1].double().log_softmax(dim=-1)
        vocab = log_probs.shape[-1]
        only_pad = torch.full_like(log_probs[0], float("-inf"))
        only_pad[PAD_ID] = 0.0
        log_probs = torch.where(finished[:, None], only_pad, log_probs)
        candidates = (scores.reshape(-1, 1) + log_probs).view(b, k * vocab)
        top_scores, top = candidates.sort(dim=1, descending=True, stable=True)
        scores, top = top_scores[:, :k], top[:, :k]
        origin = (top // vocab + torch.arange(b)[:, None] * k).flatten()
        token = (top % vocab).view(-1, 1)
        hidden = hidden[:, origin]
        tokens = torch.cat([tokens[origin], token], dim=1)
        finished = finished[origin] | (token[:, 0] == EOS_ID)
        if finished.all():
            break
    tokens = torch.nn.functional.pad(tokens, (0, max_len - tokens.shape[1]), value=PAD_ID).view(b, k, max_len)
    return mask_after_eos(tokens[:, 0])


def test_top_k_stable_is_the_head_of_a_stable_descending_sort() -> None:
    """Ties (values drawn from 4 levels, -inf among them) go to the lower column, at and across the k-th place."""
    torch.manual_seed(0)
    for columns, k in ((7, 1), (7, 3), (50, 4), (50, 50), (300, 16)):
        x = torch.randint(0, 4, (64, columns)).double()
        x[x == 0] = float("-inf")
        x[:8] = torch.randn(8, columns, dtype=torch.float64)  # rows without ties too
        values, index = top_k_stable(x, k)
        expected_values, expected_index = x.sort(dim=1, descending=True, stable=True)
        assert torch.equal(index, expected_index[:, :k]), (columns, k)
        assert torch.equal(values, expected_values[:, :k])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("beam", [2, 4, 7])
def test_beam_search_chooses_what_the_sort_of_every_candidate_chose(beam: int, ties: bool) -> None:
    """The top-k search decodes what the previous search (a sort of all k * V candidates) decoded. With `ties`
    every logit is one of 3 integers, the same in every row, so equal scores meet at every step."""
    model, enc = encoding(vocab=20, max_len=12, batch=24, seed=beam)
    if ties:
        with torch.no_grad():
            model.caption.head[-1].weight.zero_()
            model.caption.head[-1].bias.copy_(torch.randint(0, 3, (20,)).float())
    expected = sorted_beam_search(model, enc, beam, max_len=12)
    assert torch.equal(beam_search(model, enc, beam_size=beam), expected)


def test_hypotheses_sharing_a_memory_row_read_what_their_own_copies_give() -> None:
    """The decoder with memory (B, M, 2H) for B*g rows reads what it reads from the memory repeated g times."""
    model, enc = encoding(vocab=20, max_len=10, batch=6)
    g, inputs = 3, torch.randint(4, 20, (18, 5))
    state = enc.state.repeat_interleave(g, dim=0)
    with torch.no_grad():
        shared, _ = model.caption(inputs, state, enc.memory, enc.memory_pad)
        copied, _ = model.caption(inputs, state, enc.memory.repeat_interleave(g, dim=0),
                                  enc.memory_pad.repeat_interleave(g, dim=0))
    assert torch.allclose(shared, copied, atol=1e-6)
