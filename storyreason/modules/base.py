"""What both stages share: the optimizer and learning-rate schedule, and frame scaling."""

from __future__ import annotations

import math

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from torch import nn

from storyreason.errors import ConfigError, StoryreasonError


class NonFiniteLossError(StoryreasonError):
    """Training produced a NaN or infinite loss; the message names the step and the loss term."""


def weighted_loss(terms: dict[str, torch.Tensor], weights: dict[str, float], step: int) -> torch.Tensor:
    """Sum of `weights[k] * terms[k]` over the non-zero weights; refuse a non-finite result.

    Raising stops training before the optimizer step, so no checkpoint ever holds NaN weights:
    the last good checkpoint stays the newest one on disk.
    """
    loss = sum(weights[k] * v for k, v in terms.items() if weights.get(k))
    if not torch.isfinite(loss):
        bad = [f"{k}={v.item():.4g}" for k, v in terms.items() if weights.get(k) and not torch.isfinite(v)]
        raise NonFiniteLossError(
            f"non-finite loss at training step {step} (term {', '.join(bad) or 'weighted sum'}): training stopped, "
            "the last good checkpoint is kept. Lower model.lr or set trainer.gradient_clip_val."
        )
    return loss


def compile_inner(*modules: nn.Module) -> None:
    """`torch.compile` each module's forward in place (`model.compile=true`): parameter names, and so
    checkpoints, stay as they are; the steps around them and Lightning's hooks stay eager."""
    for module in modules:
        module.compile()


def adam(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam, as one fused kernel over every tensor where PyTorch has it (CPU and CUDA parameters):
    stage 2's optimizer step takes about 1 ms here against 4-7 ms for the per-tensor loop."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


COMPONENTS = "storyreason.models."  # where every class a model config (or a checkpoint) may name lives


def build_components(config: dict, key: str) -> dict:
    """`config` with each `{_target_: class, ...}` entry turned by Hydra into a partial, which the model
    calls with its own sizes (conf/model/story/*/ choose them). Only nn.Module classes of
    storyreason.models are built: checkpoints carry these entries, and loading one must never run
    other code."""
    built = dict(config)
    for name, value in config.items():
        if not (isinstance(value, dict) and "_target_" in value):
            continue
        target = value["_target_"]
        try:
            cls = get_class(target) if isinstance(target, str) and target.startswith(COMPONENTS) else None
        except (ImportError, ValueError):  # no such name, or not a class
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith(COMPONENTS)):
            raise ConfigError(f"{key}.{name}._target_={target}: not a model class of {COMPONENTS.rstrip('.')}")
        built[name] = instantiate(value, _partial_=True, _recursive_=False)
    return built


def to_unit(frames: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 frames -> float in [0, 1] (done on the batch, on the device); (N, 3, H, W) frames are laid
    out channels-last in memory if asked, as convolutions over channels-last weights run fastest."""
    x = frames.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def width_scaled_lr(lr: float, widths: list[int], reference: int | None) -> float:
    """`lr` for a model whose widest hidden layer is `max(widths)`, tuned at width `reference`: scaled by
    reference / width when wider (as muP scales the learning rate of hidden layers by 1 / fan-in, so an
    update moves each activation by about as much at every width), unchanged when narrower or when
    `reference` is None. At the reference width the factor is exactly 1, so nothing changes there."""
    if reference is None or not widths or max(widths) <= reference:
        return lr
    return lr * reference / max(widths)


class StageModule(L.LightningModule):
    """Adam with optional linear warmup + cosine decay per step; subclasses set `self.hparams`."""

    def learning_rate(self) -> float:
        """The peak learning rate the optimizer starts from (`model.lr`; a subclass may scale it)."""
        return self.hparams.lr

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = adam(params, self.learning_rate(), hp.weight_decay)
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        if hp.scheduler != "cosine":
            raise ConfigError(f"model.scheduler must be 'cosine' or 'none', got {hp.scheduler!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
