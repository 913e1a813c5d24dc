"""The caption losses: the fused one gives the same loss and gradients as logits + cross-entropy, in float32 and
under bf16; the hard-token mean weights each token by (1 - p) ** gamma."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from storyreason.data.tokenizer import PAD_ID
from storyreason.models.losses import hard_token_mean, linear_cross_entropy
from storyreason.models.story import PlainCaptionDecoder, PointerCaptionDecoder, StoryModel


def leaves(n: int = 37, features: int = 16, vocab: int = 50, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [torch.randn(n, features, requires_grad=True), torch.randn(vocab, features, requires_grad=True),
            torch.randn(vocab, requires_grad=True)]


def loss_and_grads(loss_fn, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    for t in tensors:
        t.grad = None
    loss = loss_fn(*tensors)
    loss.backward()
    return [loss.detach()] + [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("chunk", [5, 37, 512])
def test_linear_cross_entropy_is_cross_entropy_of_the_projection(chunk: int) -> None:
    """Chunks that divide the rows, one chunk, and a last chunk shorter than the others: loss and every gradient."""
    tensors = leaves()
    target = torch.randint(0, 50, (37,))
    expected = loss_and_grads(lambda h, w, b: F.cross_entropy(F.linear(h, w, b), target), tensors)
    fused = loss_and_grads(lambda h, w, b: linear_cross_entropy(h, w, b, target, chunk=chunk), tensors)
    for got, want in zip(fused, expected):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_linear_cross_entropy_under_bf16_autocast_is_close_and_float32() -> None:
    """Under autocast the products run in bfloat16 (Lightning's bf16-mixed), the loss and gradients stay float32."""
    tensors = leaves(n=64, features=32, vocab=200)
    target = torch.randint(0, 200, (64,))
    expected = loss_and_grads(lambda h, w, b: F.cross_entropy(F.linear(h, w, b), target), tensors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(lambda h, w, b: linear_cross_entropy(h, w, b, target, chunk=16), tensors)
    assert all(t.dtype == torch.float32 for t in fused)
    assert abs(fused[0] - expected[0]) < 0.05 * expected[0]
    for got, want in zip(fused[1:], expected[1:]):
        assert torch.linalg.norm(got - want) < 0.05 * torch.linalg.norm(want)


DECODERS = {"attention": {}, "none": {"caption_memory": PlainCaptionDecoder},
            "pointer": {"caption_memory": PointerCaptionDecoder},
            "pointer with context bias": {"caption_memory": partial(PointerCaptionDecoder, context_bias=True)},
            "the prose recipe's: context bias, two reads, captions read both ways": {
                "caption_memory": partial(PointerCaptionDecoder, context_bias=True, hops=2), "bidirectional": True}}


def tiny_story(decoder: str) -> StoryModel:
    return StoryModel(30, (2, 2, 2), 9, embed_dim=8, text_dim=8, fusion_dim=16, state_dim=16, decoder_dim=16,
                      heads=2, latent_hidden=4, **DECODERS[decoder])


@pytest.mark.parametrize("decoder", DECODERS)
def test_caption_loss_is_the_cross_entropy_of_caption_logits(decoder: str) -> None:
    """StoryModel.caption_loss == cross-entropy of caption_logits with padding ignored, and the same gradients
    (a copying decoder's logits are log-probabilities: its loss reads only the target's)."""
    torch.manual_seed(0)
    model = tiny_story(decoder)
    captions, lengths = torch.randint(4, 30, (6, 3, 9)), torch.full((6, 3), 9)
    target = torch.randint(4, 30, (6, 9))
    target[torch.arange(9) >= torch.randint(1, 10, (6, 1))] = PAD_ID  # captions of 1 to 9 tokens
    grads = []
    for loss_of in (lambda enc: F.cross_entropy(model.caption_logits(enc, target).flatten(0, 1), target.flatten(),
                                                ignore_index=PAD_ID),
                    lambda enc: model.caption_loss(enc, target)):
        model.zero_grad()
        loss = loss_of(model.encode(torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(1)), captions, lengths))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert len(grads_a) == len(grads_b) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("decoder", DECODERS)
def test_token_logits_are_caption_logits_at_the_tokens(decoder: str) -> None:
    torch.manual_seed(0)
    model = tiny_story(decoder).eval()
    captions, lengths = torch.randint(4, 30, (6, 3, 9)), torch.full((6, 3), 9)
    target = torch.randint(4, 30, (6, 9))
    target[torch.arange(9) >= torch.randint(1, 10, (6, 1))] = PAD_ID
    with torch.no_grad():
        enc = model.encode(torch.randn(6, 3, 8), captions, lengths)
        assert torch.allclose(model.token_logits(enc, target), model.caption_logits(enc, target)[target != PAD_ID],
                              atol=1e-6)


def test_hard_token_mean_weights_each_token_by_one_minus_p_to_the_gamma() -> None:
    """gamma = 0 is the mean; otherwise the loss is sum(w * nll) / sum(w) with w = (1 - exp(-nll)) ** gamma, and
    the weights are constants of the backward pass (a token's gradient is its weight's share)."""
    nll = torch.tensor([0.01, 0.1, 1.0, 3.0], requires_grad=True)
    assert torch.allclose(hard_token_mean(nll, 0.0), nll.mean())
    loss = hard_token_mean(nll, 2.0)
    weights = (1 - torch.exp(-nll.detach())) ** 2
    assert torch.allclose(loss, (weights * nll).sum() / weights.sum())
    loss.backward()
    assert torch.allclose(nll.grad, weights / weights.sum())
    assert nll.grad[3] > 0.5 > nll.grad[0] * 1000  # the hard tokens carry the update


@pytest.mark.parametrize("decoder", DECODERS)
def test_caption_loss_with_focal_gamma_is_the_hard_token_mean_of_the_token_losses(decoder: str) -> None:
    """Every decoder's training loss with focal_gamma weights the same per-token cross-entropies that
    caption_logits gives (the fused path cannot: the attention and plain decoders leave it for a weighted one)."""
    torch.manual_seed(0)
    model = tiny_story(decoder)
    captions, lengths = torch.randint(4, 30, (6, 3, 9)), torch.full((6, 3), 9)
    target = torch.randint(4, 30, (6, 9))
    target[:, 6:] = PAD_ID
    enc = model.encode(torch.randn(6, 3, 8), captions, lengths)
    nll = F.cross_entropy(model.caption_logits(enc, target).flatten(0, 1), target.flatten(), ignore_index=PAD_ID,
                          reduction="none")[target.flatten() != PAD_ID]
    assert torch.allclose(model.caption_loss(enc, target, focal_gamma=2.0), hard_token_mean(nll, 2.0), atol=1e-6)
    assert not torch.allclose(hard_token_mean(nll, 2.0), nll.mean(), atol=1e-3)
