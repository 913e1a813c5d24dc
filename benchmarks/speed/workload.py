"""What the benchmark trains on: StoryReasoning-schema parquet of 1280x720 JPEGs (written once and
reused), each stage's config composed as train.py composes it, and the datamodule set up from the cache."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from cache_bench import write_snapshot  # benchmarks/ is the entry script's folder, first on sys.path
from storyreason.data.datamodule import StoryDataModule
from storyreason.data.stories import StorySplit
from storyreason.data.windows import FrameDataset, WindowDataset

REPO = Path(__file__).resolve().parents[2]
CONF = str(REPO / "conf")
STAGES = ("pretrain_ae", "multimodal")


def benchmark_data(workdir: Path, frames: int, quality: int) -> Path:
    """The StoryReasoning-schema snapshot of `frames` 1280x720 JPEGs, written once and reused."""
    snapshot = workdir / f"snapshot-{frames}-q{quality}"
    marker = snapshot / "written.json"
    if not marker.is_file():
        shutil.rmtree(snapshot, ignore_errors=True)
        start = time.perf_counter()
        jpeg_bytes = write_snapshot(snapshot, frames, quality)
        marker.write_text(json.dumps({"frames": frames, "jpeg_bytes": jpeg_bytes}))
        print(f"wrote {frames} frames of 1280x720 JPEG to {snapshot} in {time.perf_counter() - start:.0f} s")
    return snapshot


def compose_stage(stage: str, snapshot: Path, scratch: Path, args: argparse.Namespace) -> DictConfig:
    """conf/config.yaml composed as train.py would for `stage` on the benchmark data: `--epochs`, no validation."""
    overrides = [
        f"stage={stage}",
        "data=storyreasoning",
        f"data.path={snapshot}",
        f"data.source.hf_cache_dir={scratch / 'hf'}",
        f"paths.root={scratch}",
        f"trainer={args.accelerator}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.limit_train_batches=1.0",  # whole epochs: every figure counts every train frame or window
        "+trainer.limit_val_batches=0",
        "callbacks.progress_bar.refresh_rate=0",
        f"data.resident={str(args.resident).lower()}",  # else a fit on a GPU would move the frames there anyway
    ]
    if args.precision:
        overrides.append(f"trainer.precision={args.precision}")
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    overrides += args.override + (args.story_override if stage == "multimodal" else [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(scratch / stage / "run")
    return cfg


def datamodule(cfg: DictConfig, device: torch.device, resident: bool, tile: int = 1) -> StoryDataModule:
    """The configured datamodule, set up from the (already built) cache; the train split `tile` times
    over, and frames on `device` if `resident`."""
    dm: StoryDataModule = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    if tile > 1:
        tile_train_split(dm, tile)
    if resident and device.type == "cuda":
        dm.to_device(device)  # what data.resident=auto does once a trainer on the GPU sets the datamodule up
    return dm


def tile_train_split(dm: StoryDataModule, tile: int) -> None:
    """Repeat the train split `tile` times: longer epochs over the same stories (each copy a story of its own),
    for a fast device."""
    split, data = dm.splits["train"], dm.datasets["train"]
    n = len(split.frames)
    dm.splits["train"] = StorySplit(
        frames=np.tile(split.frames, (tile, 1, 1, 1)),
        offsets=np.concatenate([split.offsets[:-1] + k * n for k in range(tile)] + [[tile * n]]),
        captions=split.captions * tile,
        story_ids=split.story_ids * tile,
    )
    dm.frames["train"] = torch.from_numpy(dm.splits["train"].frames)
    if isinstance(data, FrameDataset):
        dm.datasets["train"] = FrameDataset(dm.frames["train"])
        return
    windows = torch.cat([data.windows + k * n for k in range(tile)])
    dm.datasets["train"] = WindowDataset(dm.frames["train"], data.tokens.repeat(tile, 1), data.lengths.repeat(tile),
                                         windows)
