"""Convolutional autoencoder: frame (3, H, W) in [0, 1] <-> latent vector (Z,).

The latent is a small spatial map flattened to a vector (64x64 frames, 3 blocks: 8x8 cells x 6
channels = 384). Keeping positions in the layout, rather than squeezing through a fully connected
layer, is what lets the autoencoder learn sharp, well placed objects in a few CPU minutes.
"""

from __future__ import annotations

import torch
from torch import nn


def _down(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _up(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvAutoencoder(nn.Module):
    """Stride-2 conv + BatchNorm + ReLU blocks down to a (Z / g^2, g, g) map, transposed convs back up."""

    def __init__(self, image_size: int = 64, channels: tuple[int, ...] = (32, 64, 128), latent_dim: int = 384) -> None:
        super().__init__()
        factor = 2 ** len(channels)
        if image_size % factor:
            raise ValueError(
                f"data.image_size={image_size} cannot pass {len(channels)} stride-2 blocks "
                f"(model.autoencoder.channels={list(channels)}): it must be a multiple of {factor}"
            )
        self.grid = image_size // factor  # bottleneck side, g
        if latent_dim % self.grid**2:
            raise ValueError(
                f"model.autoencoder.latent_dim={latent_dim} must be a multiple of the {self.grid}x{self.grid} "
                f"bottleneck ({self.grid**2} cells) of data.image_size={image_size} with {len(channels)} blocks"
            )
        self.image_size, self.latent_dim = image_size, latent_dim
        self.latent_channels = latent_dim // self.grid**2
        widths = [3, *channels]
        self.encoder = nn.Sequential(
            *(_down(a, b) for a, b in zip(widths[:-1], widths[1:])),
            nn.Conv2d(channels[-1], self.latent_channels, 1),
        )
        rev = widths[::-1]  # e.g. 128, 64, 32, 3
        self.decoder = nn.Sequential(
            nn.Conv2d(self.latent_channels, channels[-1], 1, bias=False),
            nn.BatchNorm2d(channels[-1]),
            nn.ReLU(inplace=True),
            *(_up(a, b) for a, b in zip(rev[:-2], rev[1:-1])),
            nn.ConvTranspose2d(rev[-2], 3, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, Z)."""
        return self.encoder(frames).flatten(1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, Z) -> (N, 3, H, W) in [0, 1]."""
        return self.decoder(latent.view(len(latent), self.latent_channels, self.grid, self.grid))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))
