"""What `Trainer.fit` over our pipeline is compared with: bare PyTorch steps over the same models and
batches (a), and the seed style (b), whose Dataset decodes and resizes every JPEG with PIL in
`__getitem__`. Each contestant is a `Step`: one training step on a batch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from speed.timing import Batch, autocast, to_device
from storyreason.models.autoencoder import ConvAutoencoder
from storyreason.modules.base import adam, to_unit
from storyreason.modules.multimodal import MultimodalStoryModule


class BareAE:
    """A stage-1 step in plain PyTorch: the same autoencoder, loss and Adam, no Lightning."""

    def __init__(self, ae: ConvAutoencoder, lr: float, mse_weight: float, channels_last: bool, device: torch.device,
                 precision: str) -> None:
        self.ae = ae.to(device).train()
        if channels_last:
            self.ae.to(memory_format=torch.channels_last)
        self.optimizer = adam(list(self.ae.parameters()), lr)
        self.mse_weight, self.channels_last, self.device, self.precision = mse_weight, channels_last, device, precision

    def __call__(self, batch: Batch) -> None:
        x = to_unit(batch["frames"].to(self.device, non_blocking=True), self.channels_last)  # (B, 3, H, W)
        with autocast(self.device, self.precision):
            recon = self.ae(x).float()
        loss = F.l1_loss(recon, x) + self.mse_weight * F.mse_loss(recon, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class BareStory:
    """A stage-2 step in plain PyTorch over the module's own `training_step` (its `self.log` is a no-op
    without a trainer). With `cache_latents`, `prepare` computes the latent table of the train frames,
    as fit does once per run."""

    def __init__(self, module: MultimodalStoryModule, frames: torch.Tensor, device: torch.device, precision: str) -> None:
        self.module = module.to(device).train()
        self.optimizer = adam([p for p in module.parameters() if p.requires_grad], module.hparams.lr)
        self.frames, self.device, self.precision = frames, device, precision

    def prepare(self) -> None:
        if self.module.hparams.cache_latents:
            self.module.precompute_latents("train", self.frames)

    def __call__(self, batch: Batch) -> None:
        with autocast(self.device, self.precision):
            loss = self.module.training_step(to_device(batch, self.device), 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


@torch.no_grad()
def ae_l1(ae: ConvAutoencoder, frames: torch.Tensor, device: torch.device, channels_last: bool) -> float:
    """Mean L1 reconstruction error of `frames` (uint8) in eval mode, in fp32: what a contestant's
    training reached (f)."""
    ae.eval()
    total = 0.0
    for i in range(0, len(frames), 256):
        x = to_unit(frames[i : i + 256].to(device), channels_last)
        total += F.l1_loss(ae(x).float(), x, reduction="sum").item()
    return total / frames.numel()


# ---- (b) the seed style ------------------------------------------------------------------------------


def seed_decode(data: bytes, size: int) -> torch.Tensor:
    """A frame as a seed loader makes it every step: full-size PIL decode, centre crop, bicubic resize -> (3, H, W) uint8."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    frame = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return torch.from_numpy(np.asarray(frame).copy()).permute(2, 0, 1)


def parquet_frames(snapshot: Path, story_ids: list[str]) -> list[bytes]:
    """The encoded frames of `story_ids`, in order, read straight from the parquet files."""
    by_story = {}
    for file in sorted((snapshot / "data").glob("*.parquet")):
        table = pq.read_table(file, columns=["story_id", "images"])
        for story, images in zip(table["story_id"].to_pylist(), table["images"].to_pylist()):
            by_story[story] = [image["bytes"] for image in images]
    return [data for story in story_ids for data in by_story[story]]


class SeedFrames(Dataset):
    """Stage 1, seed style: one frame decoded per `__getitem__`."""

    def __init__(self, images: list[bytes], size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Batch:
        return {"frames": seed_decode(self.images[index], self.size)}


class SeedWindows(Dataset):
    """Stage 2, seed style: the K + 1 frames of a window decoded per `__getitem__`."""

    def __init__(self, images: list[bytes], size: int, tokens: torch.Tensor, lengths: torch.Tensor,
                 windows: torch.Tensor) -> None:
        self.images, self.size = images, size
        self.tokens, self.lengths, self.windows = tokens.cpu(), lengths.cpu(), windows.cpu()

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Batch:
        window = self.windows[index]  # (K + 1,)
        frames = torch.stack([seed_decode(self.images[i], self.size) for i in window.tolist()])
        context, target = window[:-1], window[-1]
        return {
            "context_frames": frames[:-1],  # (K, 3, H, W) uint8
            "context_captions": self.tokens[context],  # (K, L)
            "context_lengths": self.lengths[context],  # (K,)
            "target_frame": frames[-1],  # (3, H, W) uint8
            "target_caption": self.tokens[target],  # (L,)
        }


def seed_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    """The seed's loader: default collate, shuffled, no workers."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
