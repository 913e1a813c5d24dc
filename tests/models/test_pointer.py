"""The copying caption decoder (model/story/caption_memory=pointer): a distribution over the vocabulary,
whose copy share lands on the last caption's words, read alike by beams that share a memory row, and
which learns to copy words that recur only within one story where the plain attention decoder cannot yet;
with context_bias its head raises the words of every context caption, and so learns to write a story's
word that only an earlier caption holds."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from storyreason.models.decoding import beam_search
from storyreason.models.story import PointerCaptionDecoder, StoryModel

B, K, L, Z, V = 4, 3, 8, 64, 40  # Z = 1 x 8 x 8


def tiny(caption_memory: type = PointerCaptionDecoder, vocab: int = V, seed: int = 0) -> StoryModel:
    torch.manual_seed(seed)
    return StoryModel(vocab, latent_shape=(1, 8, 8), max_caption_len=L, embed_dim=16, text_dim=16, fusion_dim=32,
                      state_dim=32, decoder_dim=32, heads=2, latent_hidden=8, caption_memory=caption_memory)


def captions(g: torch.Generator, vocab: int = V, batch: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, K, L) context captions of L - 1 words and <eos> (the last caption has half padding), lengths."""
    caps = torch.randint(4, vocab, (batch, K, L), generator=g)
    caps[..., -1] = EOS_ID
    caps[:, -1, L // 2 :] = PAD_ID
    caps[:, -1, L // 2 - 1] = EOS_ID
    return caps, (caps != PAD_ID).sum(-1)


WITH_CONTEXT = partial(PointerCaptionDecoder, context_bias=True)
TWO_READS = partial(PointerCaptionDecoder, context_bias=True, hops=2)


@pytest.mark.parametrize("decoder", [PointerCaptionDecoder, WITH_CONTEXT, TWO_READS],
                         ids=["pointer", "context bias", "context bias, two reads"])
def test_log_probabilities_sum_to_one_and_beam_one_is_greedy(decoder: type) -> None:
    model = tiny(decoder).eval()
    g = torch.Generator().manual_seed(1)
    caps, lengths = captions(g)
    with torch.no_grad():
        enc = model.encode(torch.randn(B, K, Z, generator=g), caps, lengths)
        target = torch.randint(4, V, (B, L), generator=g)
        log_probs = model.caption_logits(enc, target)
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(B, L), atol=1e-5)
        assert torch.equal(beam_search(model, enc, beam_size=1), model.generate(enc))


def test_the_copy_share_lands_on_the_last_captions_words_only() -> None:
    """With the gate shut on the vocabulary, every next word is one of the last caption's (padding excluded)."""
    model = tiny().eval()
    with torch.no_grad():
        model.caption.gate.weight.zero_()
        model.caption.gate.bias.fill_(-50.0)  # sigmoid -> 0: all of the mass goes to copying
    g = torch.Generator().manual_seed(2)
    caps, lengths = captions(g)
    with torch.no_grad():
        enc = model.encode(torch.randn(B, K, Z, generator=g), caps, lengths)
        probs = model.caption_logits(enc, torch.randint(4, V, (B, L), generator=g)).exp()  # (B, L, V)
    for i in range(B):
        words = caps[i, -1][caps[i, -1] != PAD_ID].unique()
        assert torch.allclose(probs[i][:, words].sum(-1), torch.ones(L), atol=1e-5)


@pytest.mark.parametrize("decoder", [PointerCaptionDecoder, WITH_CONTEXT], ids=["pointer", "context bias"])
def test_hypotheses_sharing_a_memory_row_copy_what_their_own_copies_give(decoder: type) -> None:
    model = tiny(decoder).eval()
    g = torch.Generator().manual_seed(3)
    caps, lengths = captions(g)
    k, inputs = 3, torch.randint(4, V, (B * 3, 5), generator=g)
    with torch.no_grad():
        enc = model.encode(torch.randn(B, K, Z, generator=g), caps, lengths)
        state = enc.state.repeat_interleave(k, dim=0)
        shared, _ = model.caption(inputs, state, enc.memory, enc.memory_pad, memory_ids=enc.memory_ids,
                                  context_ids=enc.context_ids)
        copied, _ = model.caption(inputs, state, enc.memory.repeat_interleave(k, dim=0),
                                  enc.memory_pad.repeat_interleave(k, dim=0),
                                  memory_ids=enc.memory_ids.repeat_interleave(k, dim=0),
                                  context_ids=enc.context_ids.repeat_interleave(k, dim=0))
    assert torch.allclose(shared, copied, atol=1e-6)


def test_the_context_bias_raises_the_last_and_the_earlier_captions_words_by_their_own_bonus() -> None:
    """With the bonuses fixed at 5 (last caption) and 3 (earlier ones only), the head's logits rise by 5 at the
    last caption's words, by 3 at the words only an earlier caption holds, and stay the head's own elsewhere
    (<pad> too)."""
    model = tiny(WITH_CONTEXT).eval()
    with torch.no_grad():
        model.caption.context_gain.weight.zero_()
        model.caption.context_gain.bias.copy_(torch.tensor([5.0, 3.0]))
    g = torch.Generator().manual_seed(6)
    caps, lengths = captions(g)
    with torch.no_grad():
        enc = model.encode(torch.randn(B, K, Z, generator=g), caps, lengths)
        inputs = torch.randint(4, V, (B, L), generator=g)
        both, _, _, _, seen, _ = model.caption.parts(inputs, enc.state, enc.memory, enc.memory_pad,
                                                     memory_ids=enc.memory_ids, context_ids=enc.context_ids)
        raised = model.caption.logits(both, seen) - model.caption.head(both)  # (B, L, V)
    for i in range(B):
        expected = torch.zeros(V)
        expected[caps[i, :-1].flatten()] = 3.0
        expected[caps[i, -1]] = 5.0
        expected[PAD_ID] = 0.0
        assert (expected == 3.0).any() and (expected == 5.0).any() and (expected == 0.0).any()
        assert torch.allclose(raised[i], expected.expand(L, V), atol=1e-5)


def copy_accuracy(caption_memory: type, steps: int) -> float:
    """Train on 'the next caption is the last one': words drawn afresh for every story, as a story's names are."""
    vocab = 200
    model = tiny(caption_memory, vocab=vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        caps, lengths = captions(g, vocab, batch=32)
        enc = model.encode(torch.randn(32, K, Z, generator=g), caps, lengths)
        loss = model.caption_loss(enc, caps[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    caps, lengths = captions(torch.Generator().manual_seed(5), vocab, batch=64)
    with torch.no_grad():
        generated = model.generate(model.encode(torch.randn(64, K, Z), caps, lengths))
    tokens = caps[:, -1] != PAD_ID
    return (generated == caps[:, -1])[tokens].float().mean().item()


def test_it_learns_to_copy_a_storys_own_words_where_the_attention_decoder_has_not_yet() -> None:
    from storyreason.models.story import CaptionDecoder

    pointer, attention = copy_accuracy(PointerCaptionDecoder, 150), copy_accuracy(CaptionDecoder, 150)
    assert pointer > 0.9 and pointer > attention + 0.3, (pointer, attention)


def recall_accuracy(decoder: type, steps: int) -> float:
    """Train on 'write the first caption's words of each kind': 40 sets of 5 words (one word of each of 5 kinds),
    a story draws one set for its first caption, the later captions hold other words. The last caption has none
    of the answer, so copying cannot help: the head must write the story's word of each kind."""
    vocab, kinds, sets = 4 + 200 + 40, 5, 40
    model = tiny(decoder, vocab=vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen = torch.randint(0, sets, (n,), generator=g)
        answer = 4 + torch.arange(kinds)[None] * sets + chosen[:, None]  # (n, kinds): word k of the set
        caps = torch.randint(4 + kinds * sets, vocab, (n, K, L), generator=g)  # fillers
        caps[:, 0, :kinds] = answer[:, torch.randperm(kinds, generator=g)]
        caps[..., -1] = EOS_ID
        target = torch.full((n, L), PAD_ID)
        target[:, :kinds], target[:, kinds] = answer, EOS_ID
        return caps, torch.full((n, K), L), target

    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        caps, lengths, target = batch(g, 32)
        loss = model.caption_loss(model.encode(torch.randn(32, K, Z, generator=g), caps, lengths), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    caps, lengths, target = batch(torch.Generator().manual_seed(8), 64)
    with torch.no_grad():
        generated = model.generate(model.encode(torch.randn(64, K, Z), caps, lengths))
    tokens = target != PAD_ID
    return (generated == target)[tokens].float().mean().item()


def test_with_the_context_bias_it_writes_a_word_only_an_earlier_caption_holds() -> None:
    with_bias, without = recall_accuracy(WITH_CONTEXT, 150), recall_accuracy(PointerCaptionDecoder, 150)
    assert with_bias > 0.9 and with_bias > without + 0.3, (with_bias, without)
