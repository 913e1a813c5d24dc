"""Stage 1's loss: L1 + model.mse_weight x MSE of the reconstruction of a frame, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storyreason.modules.autoencoder import AutoencoderModule


@pytest.mark.parametrize("mse_weight", [0.0, 2.5])
def test_stage1_loss_is_l1_plus_mse_weight_times_mse(ae_run: Path, mse_weight: float) -> None:
    """On frames of the trained tiny autoencoder (not a perfect one, so both terms count)."""
    module = AutoencoderModule.load_from_checkpoint(ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt",
                                                    weights_only=True).eval()
    module.hparams.mse_weight = mse_weight
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        loss = module._step({"frames": frames}, "train")
        x = frames.double() / 255
        error = module.autoencoder(x.float()).double() - x
    l1, mse = error.abs().mean(), (error**2).mean()
    assert l1 > 0.01 and mse > 0.001
    assert loss.item() == pytest.approx((l1 + mse_weight * mse).item(), rel=1e-5)
