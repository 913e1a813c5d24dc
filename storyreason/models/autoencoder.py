"""Convolutional autoencoder: frame (3, H, W) in [0, 1] <-> latent vector (Z,)."""

from __future__ import annotations

import torch
from torch import nn


def _down(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _up(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvAutoencoder(nn.Module):
    """Stride-2 conv + BatchNorm + ReLU blocks down to a `latent_dim` vector, transposed convs back up."""

    def __init__(self, image_size: int = 64, channels: tuple[int, ...] = (32, 64, 128, 256), latent_dim: int = 384) -> None:
        super().__init__()
        factor = 2 ** len(channels)
        if image_size % factor:
            raise ValueError(
                f"image size {image_size} cannot pass {len(channels)} stride-2 blocks (model.autoencoder.channels): "
                f"it must be a multiple of {factor}"
            )
        self.image_size, self.latent_dim = image_size, latent_dim
        self.grid = image_size // factor  # spatial size at the bottleneck
        widths = [3, *channels]
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.to_latent = nn.Linear(channels[-1] * self.grid**2, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, channels[-1] * self.grid**2), nn.ReLU(inplace=True))
        rev = widths[::-1]  # 256, 128, 64, 32, 3
        self.decoder = nn.Sequential(
            *(_up(a, b) for a, b in zip(rev[:-2], rev[1:-1])),
            nn.ConvTranspose2d(rev[-2], 3, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, Z)."""
        return self.to_latent(self.encoder(frames).flatten(1))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, Z) -> (N, 3, H, W) in [0, 1]."""
        grid = self.from_latent(latent).view(len(latent), -1, self.grid, self.grid)
        return self.decoder(grid)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))
