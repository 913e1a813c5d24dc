"""What both stages share: the optimizer and learning-rate schedule, and frame scaling."""

from __future__ import annotations

import math

import lightning as L
import torch


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [0, 1] (done on the batch, on the device)."""
    return frames.float().div_(255.0)


class StageModule(L.LightningModule):
    """Adam with optional linear warmup + cosine decay per step; subclasses set `self.hparams`."""

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        if hp.scheduler != "cosine":
            raise ValueError(f"model.scheduler must be 'cosine' or 'none', got {hp.scheduler!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
