"""Stage 1: pretrain the convolutional autoencoder on every frame of the train split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from storyreason.metrics import image_metrics, update_images
from storyreason.models.autoencoder import ConvAutoencoder
from storyreason.modules.base import StageModule, compile_inner, to_unit, weighted_loss


class AutoencoderModule(StageModule):
    """Reconstruct frames; loss = L1 + mse_weight * MSE; L1, MSE, PSNR, SSIM over whole splits."""

    def __init__(
        self,
        autoencoder: dict,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        mse_weight: float = 1.0,
        scheduler: str = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
        stage: str = "pretrain_ae",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # in every checkpoint; the loggers get run.py's clean record
        self.autoencoder = ConvAutoencoder(**autoencoder)
        if channels_last:
            self.autoencoder.to(memory_format=torch.channels_last)
        if compile:
            compile_inner(self.autoencoder.encoder, self.autoencoder.decoder)
        self.metrics = nn.ModuleDict({s: image_metrics(f"{s}/", stem="") for s in ("val", "test")})

    def frames(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return to_unit(batch["frames"], self.hparams.channels_last)  # (B, 3, H, W)

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        x = self.frames(batch)
        recon = self.autoencoder(x).float()
        l1 = F.l1_loss(recon, x)
        terms = {"l1": l1, "mse": F.mse_loss(recon, x)}
        loss = weighted_loss(terms, {"l1": 1.0, "mse": self.hparams.mse_weight}, self.global_step)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=not on_step)  # val/test: the mean over every DDP rank's batches
        if split == "train":
            self.log("train/l1", l1, on_step=True, on_epoch=True, batch_size=len(x))
        else:
            update_images(self.metrics[split], recon, x)
            self.log_dict(self.metrics[split], on_epoch=True, batch_size=len(x))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    @torch.no_grad()
    def samples(self, batch: dict[str, torch.Tensor], split: str = "samples") -> tuple[list[torch.Tensor], list[str]]:
        """Image rows `input | reconstruction` for a few frames; no captions in stage 1."""
        x = self.frames(batch)
        recon = self.autoencoder(x).float().clamp(0, 1)
        return [torch.stack([a, b]) for a, b in zip(x, recon)], []
