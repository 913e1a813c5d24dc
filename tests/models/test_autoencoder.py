"""The convolutional autoencoder: shapes, output range, and sizes that cannot work refused clearly."""

from __future__ import annotations

import pytest
import torch

from storyreason.models.autoencoder import ConvAutoencoder


def test_shapes_and_range() -> None:
    """(N, 3, 64, 64) in [0, 1] -> (N, Z) latent -> (N, 3, 64, 64) in [0, 1]."""
    torch.manual_seed(0)
    model = ConvAutoencoder(64, channels=(8, 16, 16), latent_dim=128).eval()
    frames = torch.rand(2, 3, 64, 64)
    latent = model.encode(frames)
    assert latent.shape == (2, 128)
    assert (model.latent_channels, model.grid) == (2, 8)
    recon = model.decode(latent)
    assert recon.shape == frames.shape
    assert recon.min() >= 0 and recon.max() <= 1
    torch.testing.assert_close(model(frames), recon)


def test_latent_size_that_does_not_fill_the_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="latent_dim=100 must be a multiple of the 8x8 bottleneck"):
        ConvAutoencoder(64, channels=(8, 16, 16), latent_dim=100)


def test_image_size_that_cannot_pass_the_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="image_size=60 cannot pass 3 stride-2 blocks"):
        ConvAutoencoder(60, channels=(8, 16, 16), latent_dim=64)
