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


def _with_running_statistics(model: ConvAutoencoder) -> ConvAutoencoder:
    """BatchNorm statistics and affine parameters away from their defaults, as after training."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(layer.weight, 0.5, 1.5)
            torch.nn.init.uniform_(layer.bias, -0.2, 0.2)
    return model


@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_encoding_folds_batchnorm_without_changing_the_latents(channels_last: bool) -> None:
    torch.manual_seed(0)
    model = _with_running_statistics(ConvAutoencoder(64, channels=(8, 16, 16), latent_dim=128)).eval()
    frames = torch.rand(3, 3, 64, 64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        frames = frames.contiguous(memory_format=torch.channels_last)
    norms = [layer for layer in model.encoder.modules() if isinstance(layer, torch.nn.BatchNorm2d)]
    calls = []
    for layer in norms:
        layer.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        folded = model.encode(frames)
        assert calls == []  # no BatchNorm pass: each one ran inside its convolution
        torch.testing.assert_close(folded, model.encoder(frames).flatten(1), rtol=1e-5, atol=1e-5)
    assert len(calls) == len(norms) == 3


@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_decoding_folds_batchnorm_into_the_transposed_convolutions(channels_last: bool) -> None:
    """Stage 2 decodes its predicted latent with the frozen decoder and backpropagates through it: the
    folded decoder gives the same image and the same gradient for the latent."""
    torch.manual_seed(0)
    model = _with_running_statistics(ConvAutoencoder(64, channels=(8, 16, 16), latent_dim=128)).eval()
    model.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    norms = [layer for layer in model.decoder.modules() if isinstance(layer, torch.nn.BatchNorm2d)]
    calls = []
    for layer in norms:
        layer.register_forward_hook(lambda *args: calls.append(1))
    latent = torch.randn(3, 128, requires_grad=True)
    folded = model.decode(latent)
    assert calls == []
    (grad_folded,) = torch.autograd.grad(folded.square().sum(), latent)
    plain = model.decoder(latent.view(3, 2, 8, 8))
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), latent)
    assert len(calls) == len(norms) == 3
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_folded, grad_plain, rtol=1e-4, atol=1e-5)


def test_training_encodes_with_batch_statistics() -> None:
    """In train mode nothing is folded: BatchNorm normalises by the batch and updates its running statistics."""
    torch.manual_seed(0)
    model = _with_running_statistics(ConvAutoencoder(64, channels=(8, 16, 16), latent_dim=128)).train()
    frames = torch.rand(4, 3, 64, 64)
    bn = model.encoder[0][1]
    before = bn.running_mean.clone()
    latent = model.encode(frames)
    assert not torch.equal(bn.running_mean, before)
    eval_latent = model.eval().encode(frames)
    assert not torch.allclose(latent, eval_latent, atol=1e-3)
