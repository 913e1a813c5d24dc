"""The next-latent heads: residual_cnn (ours) adds a CNN residual to the last latent; mlp (the seed's) sees the state only."""

from __future__ import annotations

import torch

from storyreason.models.story import LatentHead, MLPLatentHead

SHAPE = (4, 3, 3)  # (C, g, g): a latent of 36 numbers


def head() -> LatentHead:
    torch.manual_seed(0)
    return LatentHead(SHAPE, state_dim=5, hidden=6).eval()


def test_the_residual_head_is_the_last_latent_plus_a_cnn_of_the_last_two_maps_and_the_state() -> None:
    """Output = latents[:, -1] + net([last map, previous map, state broadcast over the grid]), computed by hand;
    with the residual's last convolution zeroed it is the last latent exactly."""
    model = head()
    latents, state = torch.randn(2, 3, 36), torch.randn(2, 5)
    maps = latents.view(2, 3, *SHAPE)
    s = model.state_proj(state)[:, :, None, None].expand(-1, -1, 3, 3)
    residual = model.net(torch.cat([maps[:, -1], maps[:, -2], s], dim=1)).flatten(1)
    assert residual.abs().min() > 0
    assert torch.allclose(model(latents, state), latents[:, -1] + residual, atol=1e-6)
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()
    assert torch.equal(model(latents, state), latents[:, -1])


def test_the_residual_head_sees_the_last_two_latents_and_the_state_only() -> None:
    """Velocity: changing the previous latent changes the prediction; an older one does not; one context
    frame stands in as its own previous map."""
    model = head()
    latents, state = torch.randn(2, 3, 36), torch.randn(2, 5)
    base = model(latents, state)
    older, previous = latents.clone(), latents.clone()
    older[:, 0] += 1.0
    previous[:, 1] += 1.0
    assert torch.equal(model(older, state), base)
    assert not torch.allclose(model(previous, state), base)
    assert not torch.allclose(model(latents, state + 1.0), base)
    one = latents[:, -1:]
    assert torch.allclose(model(one, state), model(torch.cat([one, one], dim=1), state), atol=1e-6)


def test_the_mlp_head_ignores_the_latents() -> None:
    torch.manual_seed(0)
    model = MLPLatentHead(SHAPE, state_dim=5, hidden=6)
    state = torch.randn(2, 5)
    assert torch.equal(model(torch.randn(2, 3, 36), state), model(torch.zeros(2, 3, 36), state))
    assert model(torch.zeros(2, 3, 36), state).shape == (2, 36)
