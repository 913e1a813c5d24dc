"""The copying caption decoder (model/story/caption_memory=pointer): a distribution over the vocabulary,
whose copy share lands on the last caption's words, read alike by beams that share a memory row, and
which learns to copy words that recur only within one story where the plain attention decoder cannot yet."""

from __future__ import annotations

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


def test_log_probabilities_sum_to_one_and_beam_one_is_greedy() -> None:
    model = tiny().eval()
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


def test_hypotheses_sharing_a_memory_row_copy_what_their_own_copies_give() -> None:
    model = tiny().eval()
    g = torch.Generator().manual_seed(3)
    caps, lengths = captions(g)
    k, inputs = 3, torch.randint(4, V, (B * 3, 5), generator=g)
    with torch.no_grad():
        enc = model.encode(torch.randn(B, K, Z, generator=g), caps, lengths)
        state = enc.state.repeat_interleave(k, dim=0)
        shared, _ = model.caption(inputs, state, enc.memory, enc.memory_pad, memory_ids=enc.memory_ids)
        copied, _ = model.caption(inputs, state, enc.memory.repeat_interleave(k, dim=0),
                                  enc.memory_pad.repeat_interleave(k, dim=0),
                                  memory_ids=enc.memory_ids.repeat_interleave(k, dim=0))
    assert torch.allclose(shared, copied, atol=1e-6)


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
