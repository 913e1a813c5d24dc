"""Convolutional autoencoder: frame (3, H, W) in [0, 1] <-> latent vector (Z,).

The latent is a small spatial map flattened to a vector (64x64 frames, 3 blocks: 8x8 cells x 6
channels = 384). Keeping positions in the layout, rather than squeezing through a fully connected
layer, is what lets the autoencoder learn sharp, well placed objects in a few CPU minutes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _down(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _up(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The layers of nested Sequentials, in order."""
    if not isinstance(module, nn.Sequential):
        return [module]
    return [leaf for child in module for leaf in _leaves(child)]


def _conv_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """conv then eval-mode BatchNorm as one convolution: BN's scale folded into the weights, its shift into the bias."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out, kh, kw)
        weight = (conv.weight * scale[None, :, None, None]).contiguous(memory_format=layout)
        return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                  conv.dilation)
    weight = (conv.weight * scale[:, None, None, None]).contiguous(memory_format=layout)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def fold_bn_forward(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers(x)` with every convolution (plain or transposed) + BatchNorm2d pair run as one convolution
    (BatchNorm in eval mode: the same result to float rounding, without BatchNorm's pass over the
    activations, forward and backward)."""
    leaves = _leaves(layers)
    i = 0
    while i < len(leaves):
        layer = leaves[i]
        foldable = type(layer) in (nn.Conv2d, nn.ConvTranspose2d) and layer.padding_mode == "zeros"
        if foldable and i + 1 < len(leaves) and isinstance(leaves[i + 1], nn.BatchNorm2d):
            x = _conv_bn(layer, leaves[i + 1], x)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


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

    def _run(self, layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """`layers(x)`; in eval mode (a frozen autoencoder, evaluation) with each BatchNorm folded into the
        convolution before it: the same result, about 20% faster on a CPU. Compiled layers
        (model.compile=true) and training run as they are."""
        compiled = getattr(layers, "_compiled_call_impl", None) is not None
        return layers(x) if layers.training or compiled else fold_bn_forward(layers, x)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, Z)."""
        return self._run(self.encoder, frames).flatten(1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, Z) -> (N, 3, H, W) in [0, 1]."""
        return self._run(self.decoder, latent.view(len(latent), self.latent_channels, self.grid, self.grid))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))
