"""`make bench`: where the time goes in both stages, measured side by side in one run.

    .venv/bin/python benchmarks/bench.py [--quick] [--frames 1500] [--rounds 3] [--out benchmarks/results.json]

Writes StoryReasoning-schema parquet whose frames are 1280x720 JPEGs (cache_bench's writer; kept in
--workdir and reused while the frame count matches), builds the frame cache through
`data=storyreasoning` in a fresh cache folder, then measures each stage with the real Hydra config:

  (a) `Trainer.fit` (the configured callbacks and logger, validation off) vs a bare PyTorch loop over
      the same model and batches (plus one pass of the train loader): time per epoch, `fit_overhead_ratio`;
  (b) our training epoch (`Trainer.fit` over the frame cache) vs a seed-style loop whose Dataset
      decodes and resizes every frame with PIL in `__getitem__` (NCHW model; stage 2 re-encodes the
      context every step): `speedup_vs_seed_style` per epoch once the cache exists, and
      `speedup_vs_seed_style_first_run` for a first one-epoch run, where our side also pays the cache
      build, the datamodule setup and Trainer start-up, and the seed side its parquet read;
  (c) stage 2 with latents precomputed once per run (`model.cache_latents=true`, their encoding
      counted) vs re-encoding the context frames every step: `latent_cache_speedup`;
  (d) the DataModule alone: train batches of frames and windows per second;
  (e) model FLOPs per image (torch.utils.flop_counter) x images/s / a GEMM peak measured in the same
      run and precision: `flop_utilization`; and its ceiling, the convolutions alone, each timed in
      isolation on its training input (`flop_utilization_ceiling`);
  (f) fp32 vs bf16-mixed: throughput and autoencoder L1 after the same steps, where bf16 is native;
  (g) peak memory; (h) the demo's wall time per stage, read from its last runs;
  and stage 1's bare step with the autoencoder `model.compile=true` builds (`compile_speedup`).

On a shared machine the background load swings several-fold within a minute, so nothing is timed
in separate runs: each round is one `Trainer.fit`, and the bare contestants step on the very batches it
trains on, between its steps (half before, half after, order rotated every batch), their seconds taken
out of the fit's. The seed style steps the same way, on batches it decodes itself: each round times
its own share of the seed epoch (a third of it over 3 rounds), scaled to the whole epoch.
Ratios are medians over rounds of ratios within a round; absolute figures are the fastest round's.
Ratios come first in the table.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before tqdm and datasets are imported: no progress bars between the benchmark's lines
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import argparse
import io
import json
import logging
import math
import platform
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from cache_bench import write_snapshot  # benchmarks/ is the script's folder, first on sys.path
from storyreason.data.cache import build_cache
from storyreason.data.datamodule import StoryDataModule
from storyreason.data.stories import StorySplit
from storyreason.data.windows import FrameDataset, WindowDataset
from storyreason.models.autoencoder import ConvAutoencoder
from storyreason.modules.base import adam, to_unit
from storyreason.modules.multimodal import MultimodalStoryModule

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
STAGES = ("pretrain_ae", "multimodal")
TARGETS = {  # issue 6: figure -> (comparison, bound)
    "fit_overhead_ratio.pretrain_ae": ("<=", 1.05),
    "fit_overhead_ratio.multimodal": ("<=", 1.05),
    "flop_utilization": (">=", 0.75),
    "speedup_vs_seed_style.pretrain_ae": (">=", 4.0),
    "speedup_vs_seed_style.multimodal": (">=", 8.0),
    "latent_cache_speedup": (">=", 1.5),
    "bf16_speedup": (">=", 1.3),
}
Batch = dict[str, torch.Tensor]


# ---- sizes and machine ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 120 frames, one round (< 1 min)")
    parser.add_argument("--frames", type=int, default=None, help="1280x720 JPEG frames to write (default 1500; quick 120)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each stage's contestants (default 3; quick 1)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the written frames")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed fit or bare loop (the seed style runs one)")
    parser.add_argument("--seed-batches", type=int, default=None,
                        help="seed-style batches timed per round, scaled to the epoch (default: the epoch shared out "
                             "over the rounds)")
    parser.add_argument("--gemm-size", type=int, default=None, help="(e): side of the square matmul (default 2048, GPU 8192)")
    parser.add_argument("--tile", type=int, default=1,
                        help="train on the train split this many times over per epoch (longer epochs for a GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="data.batch_size of both stages (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="trainer=cpu or trainer=gpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                        help="trainer.precision (default: the trainer config's)")
    parser.add_argument("--resident", action="store_true", help="GPU: keep the frames on the device (no copy per batch)")
    parser.add_argument("--bf16", choices=("auto", "skip", "force"), default="auto",
                        help="(f): auto = only where bf16 is native; force = run it even where it is emulated")
    parser.add_argument("--bf16-epochs", type=int, default=2, help="(f): epochs of stage-1 training per precision")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also fit stage 1 with model.compile=true, compiling first (default: on; quick: off)")
    parser.add_argument("--override", action="append", default=[], help="Hydra override for both stages (repeatable)")
    parser.add_argument("--story-override", action="append", default=[], help="Hydra override for stage 2 only")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_data", help="benchmark data and scratch")
    parser.add_argument("--demo-root", type=Path, default=REPO / "outputs", help="(h): where the demo's runs are")
    parser.add_argument("--demo-timing", type=Path, default=REPO / "docs" / "demo" / "timing.json",
                        help="(h): the wall times `make demo` writes, read first")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json", help="results JSON")
    args = parser.parse_args(argv)
    args.frames = args.frames or (120 if args.quick else 1500)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.gemm_size = args.gemm_size or (1024 if args.quick else None)
    args.compile = not args.quick if args.compile is None else args.compile
    if args.frames < 120:
        parser.error("--frames must be >= 120 (8 stories of 15 frames: at least one in each split)")
    return args


def _cpuinfo(field: str) -> str:
    """The first `field` of /proc/cpuinfo ('' where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), "")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...)."""
    return set(_cpuinfo("flags").split())


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {
        "cpu": _cpuinfo("model name") or platform.processor(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak(device: torch.device, phase: str) -> dict[str, float]:
    """{phase_cuda_max_allocated_mib: the most GPU memory allocated since the last call}; {} on a CPU."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return {f"{phase}_cuda_max_allocated_mib": peak}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(out: dict, key: str, device: torch.device) -> Iterator[None]:
    """Store the seconds the block took in out[key] (the device's queue drained at both ends)."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - start


def autocast(device: torch.device, precision: str):
    """What Lightning's bf16-mixed plugin wraps each step in; nothing for full precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()


# ---- data and config -------------------------------------------------------------------------------


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


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---- (a) fit vs the bare loop, interleaved step by step ------------------------------------------------


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
        x = to_unit(batch["frames"].to(self.device, non_blocking=True))  # (B, 3, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            recon = self.ae(x).float()
        loss = F.l1_loss(recon, x) + self.mse_weight * F.mse_loss(recon, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class BareStory:
    """A stage-2 step in plain PyTorch over the module's own `training_step` (its `self.log` is a no-op
    without a trainer). With `cache_latents`, `prepare` computes the latent table, as fit does once per run."""

    def __init__(self, module: MultimodalStoryModule, frames: torch.Tensor, device: torch.device, precision: str) -> None:
        self.module = module.to(device).train()
        self.optimizer = adam([p for p in module.parameters() if p.requires_grad], module.hparams.lr)
        self.frames, self.device, self.precision = frames, device, precision

    def prepare(self) -> None:
        self.module._latent_tables.clear()
        if self.module.hparams.cache_latents:
            self.module._latent_tables["train"] = self.module.encode_frames(self.frames)

    def __call__(self, batch: Batch) -> None:
        with autocast(self.device, self.precision):
            loss = self.module.training_step(to_device(batch, self.device), 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


Step = Callable[[Batch], None]


class Shadows(L.Callback):
    """Bare contestants stepped on the very batches the fit trains on, interleaved with its steps.

    On even batches they run before the fit's step, on odd ones after it, in an order rotated every
    batch, so the fit and each contestant meet the same background load on a shared machine. Their
    seconds are kept per contestant and taken out of the fit's: `fit_s` is the fit's epochs alone
    (first epoch start to the end of training: epoch-end hooks and checkpoints included).
    """

    def __init__(self, steps: dict[str, Step], prepare: dict[str, Callable[[], None]]) -> None:
        self.steps, self.prepare = steps, prepare
        self.seconds = dict.fromkeys(steps, 0.0)
        self.total_s = self.fit_s = self.fit_call_s = 0.0
        self._start = self._before = 0.0
        self._batches = 0

    def _time(self, name: str, fn: Callable, device: torch.device, *args: object) -> None:
        sync(device)
        start = time.perf_counter()
        fn(*args)
        sync(device)
        self.seconds[name] += time.perf_counter() - start
        self.total_s += time.perf_counter() - start

    def _step_all(self, batch: Batch, device: torch.device) -> None:
        names = list(self.steps)
        turn = self._batches % len(names)
        for name in names[turn:] + names[:turn]:
            self._time(name, self.steps[name], device, batch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            for name, prepare in self.prepare.items():
                self._time(name, prepare, pl_module.device)
            sync(pl_module.device)
            self._start, self._before = time.perf_counter(), self.total_s

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Batch, batch_idx: int) -> None:
        if self._batches % 2 == 0:
            self._step_all(batch, pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: Batch,
                           batch_idx: int) -> None:
        if self._batches % 2 == 1:
            self._step_all(batch, pl_module.device)
        self._batches += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self.fit_s = time.perf_counter() - self._start - (self.total_s - self._before)


def fit_round(cfg: DictConfig, module: L.LightningModule, dm: StoryDataModule, run_dir: Path, steps: dict[str, Step],
              prepare: dict[str, Callable[[], None]] | None = None) -> Shadows:
    """`Trainer.fit` for `trainer.max_epochs` epochs with the configured callbacks and logger, the bare
    contestants interleaved; returns their timings, with `fit_call_s` the whole call less theirs."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    shadows = Shadows(steps, prepare or {})
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [shadows]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    out: dict[str, float] = {}
    with timed(out, "s", module.device):
        trainer.fit(module, datamodule=dm)
    shadows.fit_call_s = out["s"] - shadows.total_s
    return shadows


def run_epochs(step: Step, loader: DataLoader, epochs: int, device: torch.device) -> float:
    """Seconds of `epochs` passes of `step` over `loader` (a bare loop on its own)."""
    out: dict[str, float] = {}
    with timed(out, "s", device):
        for _ in range(epochs):
            for batch in loader:
                step(batch)
    return out["s"]


def warm_up(step: Step, loader: DataLoader) -> None:
    """The first and the last (often smaller) batch once: every batch shape's kernels chosen, untimed."""
    batches = list(loader)
    for batch in {0: batches[0], len(batches) - 1: batches[-1]}.values():
        step(batch)


def paired(rounds: list[dict[str, float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator / denominator, both from the same round (the same load)."""
    return statistics.median(r[numerator] / r[denominator] for r in rounds)


# ---- (b) the seed-style loop -----------------------------------------------------------------------


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


class SeedStyle:
    """The seed-style loop as a contestant: each call decodes the next batch of its own loader with PIL
    and trains a step on it (the fit's batch is ignored), up to `per_round` batches a round; the
    loader goes on where the last round stopped (a new epoch after its end)."""

    def __init__(self, loader: DataLoader, step: Step, per_round: int) -> None:
        self.loader, self.step = loader, step
        self.batches = iter(loader)
        self.limit = max(1, min(len(loader), per_round))
        self.done = 0

    def new_round(self) -> None:
        self.done = 0

    def __call__(self, batch: Batch) -> None:
        if self.done < self.limit:
            seed_batch = next(self.batches, None)
            if seed_batch is None:
                self.batches = iter(self.loader)
                seed_batch = next(self.batches)
            self.step(seed_batch)
            self.done += 1

    def epoch_s(self, seconds: float) -> float:
        """`seconds` of this round's batches, scaled to a whole epoch."""
        return seconds * len(self.loader) / max(self.done, 1)


# ---- (d) the datamodule, (e) FLOPs, (f) bf16 ---------------------------------------------------------


def loader_epoch_s(dm: StoryDataModule, device: torch.device, passes: int = 3) -> float:
    """Seconds of the fastest of `passes` passes over the train loader, each batch moved to `device`:
    (d), and what a bare loop pays to fetch its batches."""
    seconds = []
    for _ in range(passes):
        out: dict[str, float] = {}
        with timed(out, "s", device):
            for batch in dm.train_dataloader():
                to_device(batch, device)
        seconds.append(out["s"])
    return min(seconds)


def gemm_peak(device: torch.device, precision: str, n: int | None = None, seconds: float = 1.0) -> float:
    """FLOP/s of the best n x n matmul in the run's precision (fp32, or bf16 for bf16-mixed)."""
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best, spent = math.inf, 0.0
    for i in range(11):  # the first call only warms up; then up to 10 timed, or `seconds`
        out: dict[str, float] = {}
        with timed(out, "s", device):
            torch.mm(a, b)
        best = min(best, out["s"]) if i else best
        spent += out["s"]
        if spent > seconds and i >= 3:
            break
    return 2 * n**3 / best


def train_flops_per_image(ae: ConvAutoencoder, batch: torch.Tensor, device: torch.device, precision: str) -> float:
    """FLOPs of one stage-1 training step (forward + backward) per image, counted by FlopCounterMode."""
    ae = ae.to(device)
    x = to_unit(batch.to(device)).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            recon = ae(x).float()
        (F.l1_loss(recon, x) + F.mse_loss(recon, x)).backward()
    ae.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def conv_ceiling(ae: ConvAutoencoder, batch: torch.Tensor, device: torch.device, precision: str,
                 repeats: int = 5) -> tuple[float, float]:
    """(FLOPs, seconds) of the autoencoder's convolutions alone: each one's forward and backward timed
    in isolation (best of `repeats`) on the very input it sees in a training step, in channels-last and
    the run's precision. No pipeline built around these kernels can beat their FLOP/s, so divided by
    the GEMM peak it is the ceiling of `flop_utilization` on this machine."""
    ae = ae.to(device).train().to(memory_format=torch.channels_last)
    inputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.append((m, args[0].detach().clone())))
             for m in ae.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    x = to_unit(batch.to(device)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device, precision):
        ae(x)
    for hook in hooks:
        hook.remove()
    flops = seconds = 0.0
    for i, (conv, inp) in enumerate(inputs):
        inp = inp.requires_grad_(i > 0)  # the frames themselves need no gradient

        def step() -> None:
            with autocast(device, precision):
                out = conv(inp)
            out.backward(torch.ones_like(out))

        with FlopCounterMode(display=False) as counter:
            step()
        best = math.inf
        for _ in range(repeats):
            spent: dict[str, float] = {}
            with timed(spent, "s", device):
                step()
            best = min(best, spent["s"])
        flops, seconds = flops + counter.get_total_flops(), seconds + best
    ae.zero_grad(set_to_none=True)
    return flops, seconds


def bf16_support(device: torch.device) -> tuple[bool, str, float | None]:
    """Whether bf16 autocast runs on native kernels here: CUDA's own check; on a CPU, avx512_bf16 or
    amx_bf16 in /proc/cpuinfo and a small conv step that is faster in bf16 than in fp32.
    Returns (supported, reason, the probe's bf16/fp32 time ratio)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA reports bf16 support" if ok else "this GPU has no bf16", None
    native = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
    ratio = _bf16_probe()
    if not native:
        return False, (f"this CPU lacks avx512_bf16 and amx_bf16, so bf16 autocast runs emulated kernels "
                       f"(a small conv step took {ratio:.1f}x its fp32 time)"), ratio
    if ratio >= 1.0:
        return False, f"{', '.join(native)} present, but a small bf16 conv step took {ratio:.1f}x its fp32 time", ratio
    return True, f"{', '.join(native)} present; a small bf16 conv step took {ratio:.2f}x its fp32 time", ratio


def _bf16_probe(batch: int = 4, steps: int = 2) -> float:
    """Time of a small autoencoder step in bf16 autocast over its fp32 time, on the CPU."""
    torch.manual_seed(0)
    ae = ConvAutoencoder().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    seconds = {}
    for precision in ("32-true", "bf16-mixed"):
        best = math.inf
        for i in range(steps + 1):
            start = time.perf_counter()
            with autocast(torch.device("cpu"), precision):
                recon = ae(x).float()
            F.l1_loss(recon, x).backward()
            best = min(best, time.perf_counter() - start) if i else best
        seconds[precision] = best
    return seconds["bf16-mixed"] / seconds["32-true"]


@torch.no_grad()
def ae_l1(ae: ConvAutoencoder, frames: torch.Tensor, device: torch.device, channels_last: bool) -> float:
    """Mean L1 reconstruction error of `frames` (uint8) in eval mode, in fp32."""
    ae.eval()
    total = 0.0
    for i in range(0, len(frames), 256):
        x = to_unit(frames[i : i + 256].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        total += F.l1_loss(ae(x).float(), x, reduction="sum").item()
    return total / frames.numel()


# ---- (h) the demo ----------------------------------------------------------------------------------


def demo_wall_time(root: Path, timing: Path) -> dict:
    """Wall seconds of the demo's stages: `timing` if `make demo` wrote it, else the newest finished
    run of each stage under `root` (its directory's start time to its train.log's last line)."""
    if timing.is_file():
        seconds = json.loads(timing.read_text())
        return {"source": f"{timing} (written by make demo)",
                **{f"{part}_s": float(seconds[part]) for part in (*STAGES, "total") if part in seconds}}
    out: dict = {}
    sources = []
    for stage in STAGES:
        runs = sorted(p.parent for p in (root / stage).glob("*/metrics.json") if (p.parent / "train.log").is_file())
        if not runs:
            continue
        run = runs[-1]
        start = datetime.strptime(run.name, "%Y-%m-%d_%H-%M-%S_%f")
        stamps = [line[1:24] for line in (run / "train.log").read_text().splitlines() if line.startswith("[")]
        if stamps:
            end = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f")
            out[f"{stage}_s"] = (end - start).total_seconds()
            sources.append(str(run))
    if not out:
        return {"source": None, "reason": f"no finished demo runs under {root} and no docs/demo/timing.json"}
    return {"source": "run directory start time to the last train.log line: " + ", ".join(sources), **out}


# ---- the benchmark -----------------------------------------------------------------------------------


def measure_rounds(cfg: DictConfig, module: L.LightningModule, dm: StoryDataModule, run_dir: Path,
                   contestants: dict[str, Step], seed: SeedStyle, args: argparse.Namespace, loader_s: float,
                   before_fit: Callable[[], None] = lambda: None) -> list[dict[str, float]]:
    """`args.rounds` fits with the bare contestants and the seed style interleaved. Returns, per round,
    seconds per epoch of the fit and of each contestant (a bare loop also pays `loader_s` to fetch its
    batches; the seed style's share of batches is scaled to its epoch)."""
    rounds = []
    prepare = {name: step.prepare for name, step in contestants.items() if hasattr(step, "prepare")}
    for r in range(args.rounds):
        before_fit()
        seed.new_round()
        shadows = fit_round(cfg, module, dm, run_dir, {**contestants, "seed_style": seed}, prepare)
        epochs = cfg.trainer.max_epochs
        result = {"fit": shadows.fit_s / epochs, "fit_call_s": shadows.fit_call_s}
        result.update({name: shadows.seconds[name] / epochs + loader_s for name in contestants})
        result["seed_style"] = seed.epoch_s(shadows.seconds["seed_style"])
        rounds.append(result)
        print(f"  round {r + 1}: seconds per epoch: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()),
              flush=True)
    return rounds


def stage1(cfg: DictConfig, args: argparse.Namespace, device: torch.device, precision: str, snapshot: Path,
           scratch: Path) -> tuple[dict, dict]:
    """(a), (b), (d), (e) for stage 1 and compile; returns the figures and the trained autoencoder's state."""
    L.seed_everything(cfg.seed, verbose=False)
    setup: dict[str, float] = {}
    with timed(setup, "setup_s", device):
        dm = datamodule(cfg, device, args.resident, args.tile)
    frames = len(dm.datasets["train"])
    module = instantiate(cfg.model, _convert_="all").to(device)
    hp = module.hparams

    def bare(channels_last: bool, ae: ConvAutoencoder | None = None) -> BareAE:
        return BareAE(ae or ConvAutoencoder(**hp.autoencoder), hp.lr, hp.mse_weight, channels_last, device, precision)

    print(f"stage 1: {frames} train frames, batch {cfg.data.batch_size}", flush=True)
    loader_s = loader_epoch_s(dm, device)
    contestants: dict[str, Step] = {"bare": bare(hp.channels_last), "bare_nchw": bare(False)}
    compiled: dict = {}
    if args.compile:  # the autoencoder exactly as model.compile=true builds it
        contestants["bare_compiled"] = bare(hp.channels_last, instantiate(cfg.model, compile=True, _convert_="all").autoencoder)
        try:
            compiled["first_epoch_s"] = run_epochs(contestants["bare_compiled"], dm.train_dataloader(), 1, device)
            print(f"  model.compile=true, first epoch (compiling): {compiled['first_epoch_s']:.1f} s", flush=True)
        except Exception as err:  # no C++ compiler, an unsupported op...: the rest of the benchmark still runs
            compiled["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            print(f"  model.compile=true failed, left out: {compiled['error']}", flush=True)
            del contestants["bare_compiled"]
    for step in contestants.values():
        warm_up(step, dm.train_dataloader())
    seed_setup: dict[str, float] = {}
    with timed(seed_setup, "s", device):
        images = parquet_frames(snapshot, dm.splits["train"].story_ids)
        loader = seed_loader(SeedFrames(images, cfg.data.image_size), cfg.data.batch_size, cfg.seed)
    seed = SeedStyle(loader, bare(False), args.seed_batches or math.ceil(len(loader) / args.rounds))
    rounds = measure_rounds(cfg, module, dm, scratch / "pretrain_ae" / "run", contestants, seed, args, loader_s)
    sample = dm.datasets["train"].frames[: cfg.data.batch_size]
    flops = train_flops_per_image(ConvAutoencoder(**hp.autoencoder), sample, device, precision)
    conv_flops, conv_s = conv_ceiling(ConvAutoencoder(**hp.autoencoder), sample, device, precision)
    fastest = {k: min(r[k] for r in rounds) for k in rounds[0]}
    figures = {
        "train_frames": frames,
        "datamodule_setup_s": setup["setup_s"],
        "fit_epoch_s": fastest["fit"],
        "fit_call_s": fastest["fit_call_s"],
        "bare_epoch_s": fastest["bare"],
        "bare_nchw_epoch_s": fastest["bare_nchw"],
        "seed_style_setup_s": seed_setup["s"],
        "seed_style_epoch_s": fastest["seed_style"],
        "fit_images_per_s": frames / fastest["fit"],
        "bare_images_per_s": frames / fastest["bare"],
        "seed_style_images_per_s": frames / fastest["seed_style"],
        "fit_overhead_ratio": paired(rounds, "fit", "bare"),
        "channels_last_speedup": paired(rounds, "bare_nchw", "bare"),
        "speedup_vs_seed_style": paired(rounds, "seed_style", "fit"),
        "datamodule_frames_per_s": frames / loader_s,
        "train_flops_per_image": flops,
        "conv_flops_per_s": conv_flops / conv_s,
        "rounds": rounds,
    }
    if "error" in compiled:
        figures["compile_error"] = compiled["error"]
    elif compiled:
        figures["compiled_first_epoch_s"] = compiled["first_epoch_s"]
        figures["bare_compiled_epoch_s"] = fastest["bare_compiled"]
        figures["compile_speedup"] = paired(rounds, "bare", "bare_compiled")
    return figures, {k: v.detach().cpu() for k, v in module.autoencoder.state_dict().items()}


def stage2(cfg: DictConfig, args: argparse.Namespace, device: torch.device, precision: str, snapshot: Path,
           scratch: Path, ae_state: dict) -> dict:
    """(a), (b), (c), (d) for stage 2."""
    L.seed_everything(cfg.seed, verbose=False)
    setup: dict[str, float] = {}
    with timed(setup, "setup_s", device):
        dm = datamodule(cfg, device, args.resident, args.tile)
    windows = len(dm.datasets["train"])

    def new_module(cache_latents: bool) -> MultimodalStoryModule:
        module = instantiate(cfg.model, tokenizer_state=dm.tokenizer.to_json(), max_caption_len=dm.max_caption_len,
                             ae_ckpt=None, cache_latents=cache_latents, _convert_="all")
        module.load_autoencoder(ae_state)
        return module.to(device)

    print(f"stage 2: {windows} train windows of {cfg.data.context} + 1 frames, batch {cfg.data.batch_size}", flush=True)
    loader_s = loader_epoch_s(dm, device)
    fit_module = new_module(True)
    contestants: dict[str, Step] = {
        "bare": BareStory(new_module(True), dm.frames["train"], device, precision),
        "bare_reencode": BareStory(new_module(False), dm.frames["train"], device, precision),
    }
    for step in contestants.values():
        step.prepare()
        warm_up(step, dm.train_dataloader())
    seed_setup: dict[str, float] = {}
    with timed(seed_setup, "s", device):
        images = parquet_frames(snapshot, dm.splits["train"].story_ids)
        data = dm.datasets["train"]
        dataset = SeedWindows(images, cfg.data.image_size, data.tokens, data.lengths, data.windows)
        loader = seed_loader(dataset, cfg.data.batch_size, cfg.seed)
    seed = SeedStyle(loader, BareStory(new_module(False), dm.frames["train"], device, precision),
                     args.seed_batches or math.ceil(len(loader) / args.rounds))
    rounds = measure_rounds(
        cfg, fit_module, dm, scratch / "multimodal" / "run", contestants, seed, args, loader_s,
        before_fit=lambda: fit_module.load_autoencoder(ae_state),  # forgets the latent table: each fit encodes again
    )
    table: dict[str, float] = {}
    with timed(table, "s", device):
        fit_module.encode_frames(dm.frames["train"])
    fastest = {k: min(r[k] for r in rounds) for k in rounds[0]}
    return {
        "train_windows": windows,
        "datamodule_setup_s": setup["setup_s"],
        "fit_epoch_s": fastest["fit"],
        "fit_call_s": fastest["fit_call_s"],
        "bare_epoch_s": fastest["bare"],
        "bare_reencode_epoch_s": fastest["bare_reencode"],
        "latent_table_s": table["s"],
        "seed_style_setup_s": seed_setup["s"],
        "seed_style_epoch_s": fastest["seed_style"],
        "fit_windows_per_s": windows / fastest["fit"],
        "bare_windows_per_s": windows / fastest["bare"],
        "seed_style_windows_per_s": windows / fastest["seed_style"],
        "fit_overhead_ratio": paired(rounds, "fit", "bare"),
        "latent_cache_speedup": paired(rounds, "bare_reencode", "bare"),
        "speedup_vs_seed_style": paired(rounds, "seed_style", "fit"),
        "datamodule_windows_per_s": windows / loader_s,
        "rounds": rounds,
    }


def precision_comparison(cfg: DictConfig, args: argparse.Namespace, device: torch.device) -> dict:
    """(f): stage-1 bare training, fp32 vs bf16-mixed, the same steps from the same weights; L1 on val."""
    supported, reason, probe = bf16_support(device)
    result: dict = {"supported": supported, "reason": reason}
    if probe is not None:
        result["probe_bf16_over_fp32_time"] = probe
    if args.bf16 == "skip" or (not supported and args.bf16 != "force"):
        return result
    dm = datamodule(cfg, device, args.resident, args.tile)
    hp = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(cfg.seed)
    start = ConvAutoencoder(**hp["autoencoder"]).state_dict()
    for precision in ("32-true", "bf16-mixed"):
        ae = ConvAutoencoder(**hp["autoencoder"])
        ae.load_state_dict(start)
        step = BareAE(ae, hp["lr"], hp["mse_weight"], hp["channels_last"], device, precision)
        seconds = run_epochs(step, dm.train_dataloader(), args.bf16_epochs, device)
        key = "bf16" if precision.startswith("bf16") else "fp32"
        result[f"{key}_images_per_s"] = args.bf16_epochs * len(dm.datasets["train"]) / seconds
        result[f"{key}_val_l1"] = ae_l1(ae, dm.frames["val"], device, hp["channels_last"])
    result["bf16_speedup"] = result["bf16_images_per_s"] / result["fp32_images_per_s"]
    result["val_l1_change"] = result["bf16_val_l1"] / result["fp32_val_l1"] - 1
    return result


def run(args: argparse.Namespace) -> dict:
    """Every measurement; the results as written to JSON."""
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")  # as storyreason.run.train does
    info = machine(device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    snapshot = benchmark_data(args.workdir, args.frames, args.quality)
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    try:
        cfg1 = compose_stage("pretrain_ae", snapshot, scratch, args)
        precision = str(cfg1.trainer.precision)
        build: dict[str, float] = {}
        with timed(build, "s", torch.device("cpu")):
            build_cache(instantiate(cfg1.data.source, _convert_="all"), cfg1.data.cache_dir)
        print(f"frame cache built in {build['s']:.1f} s (fresh cache folder, HF Arrow copy included)", flush=True)
        memory = {"after_cache_build_rss_mib": peak_rss_mib()}
        peak = [gemm_peak(device, precision, args.gemm_size)]
        s1, ae_state = stage1(cfg1, args, device, precision, snapshot, scratch)
        peak.append(gemm_peak(device, precision, args.gemm_size))
        memory["after_stage1_rss_mib"] = peak_rss_mib()
        memory.update(cuda_peak(device, "stage1"))
        cfg2 = compose_stage("multimodal", snapshot, scratch, args)
        s2 = stage2(cfg2, args, device, precision, snapshot, scratch, ae_state)
        peak.append(gemm_peak(device, precision, args.gemm_size))  # the machine's speed drifts: the best of three
        memory["after_stage2_rss_mib"] = peak_rss_mib()
        memory.update(cuda_peak(device, "stage2"))
        bf16 = precision_comparison(cfg1, args, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    gemm = max(peak)
    memory["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        memory["cuda_max_allocated_mib"] = max(memory["stage1_cuda_max_allocated_mib"],
                                               memory["stage2_cuda_max_allocated_mib"])
    s1["flop_utilization"] = s1["train_flops_per_image"] * s1["fit_images_per_s"] / gemm
    s1["flop_utilization_bare"] = s1["train_flops_per_image"] * s1["bare_images_per_s"] / gemm
    s1["flop_utilization_ceiling"] = s1["conv_flops_per_s"] / gemm
    for figures in (s1, s2):  # a first one-epoch run on a new dataset, one-off costs on both sides
        figures["first_run_s"] = build["s"] + figures["datamodule_setup_s"] + figures["fit_call_s"]
        figures["seed_style_first_run_s"] = figures["seed_style_setup_s"] + figures["seed_style_epoch_s"]
        figures["speedup_vs_seed_style_first_run"] = figures["seed_style_first_run_s"] / figures["first_run_s"]
    ratios = {
        "fit_overhead_ratio": {"pretrain_ae": s1["fit_overhead_ratio"], "multimodal": s2["fit_overhead_ratio"]},
        "speedup_vs_seed_style": {"pretrain_ae": s1["speedup_vs_seed_style"], "multimodal": s2["speedup_vs_seed_style"]},
        "speedup_vs_seed_style_first_run": {
            "pretrain_ae": s1["speedup_vs_seed_style_first_run"],
            "multimodal": s2["speedup_vs_seed_style_first_run"],
        },
        "latent_cache_speedup": s2["latent_cache_speedup"],
        "flop_utilization": s1["flop_utilization"],
        "channels_last_speedup": s1["channels_last_speedup"],
    }
    if "bf16_speedup" in bf16:
        ratios["bf16_speedup"] = bf16["bf16_speedup"]
    if "compile_speedup" in s1:
        ratios["compile_speedup"] = s1["compile_speedup"]
    info["load_average_at_end"] = round(os.getloadavg()[0], 2)
    return {
        "ratios": ratios,
        "targets": targets(ratios, bf16),
        "pretrain_ae": s1,
        "multimodal": s2,
        "cache_build_s": build["s"],
        "gemm_peak_flops": gemm,
        "gemm_peak_readings_flops": peak,  # before stage 1, after it, after stage 2
        "bf16": bf16,
        "memory": memory,
        "demo": demo_wall_time(args.demo_root, args.demo_timing),
        "machine": info,
        "settings": {"frames": args.frames, "rounds": args.rounds, "epochs": args.epochs, "tile": args.tile,
                     "precision": precision, "batch_size": int(cfg1.data.batch_size), "resident": bool(args.resident),
                     "accelerator": args.accelerator, "compile": bool(args.compile)},
    }


def _lookup(ratios: dict, name: str) -> float | None:
    value: object = ratios
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, float) else None


def targets(ratios: dict, bf16: dict) -> dict:
    """Each issue target: its bound, the measured value and whether it is met (None where not measured)."""
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = _lookup(ratios, name)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        if name == "bf16_speedup" and value is not None:
            met = met and abs(bf16["val_l1_change"]) <= 0.05
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


# ---- the table -----------------------------------------------------------------------------------------


def table(results: dict) -> str:
    """The results as a markdown table: ratios with their targets first, then the figures behind them."""
    s1, s2, bf16 = results["pretrain_ae"], results["multimodal"], results["bf16"]
    rows = [["ratio", "measured", "target", "met"]]
    for name, target in results["targets"].items():
        value = target["value"]
        shown = "skipped: bf16 not native here" if name == "bf16_speedup" and value is None else f"{value:.2f}"
        rows.append([name, shown, target["target"], {True: "yes", False: "no", None: "-"}[target["met"]]])
    for stage in STAGES:
        value = results[stage]["speedup_vs_seed_style_first_run"]
        rows.append([f"speedup_vs_seed_style_first_run.{stage}", f"{value:.2f}", "", ""])
    rows.append(["channels_last_speedup (stage 1, bare loop)", f"{s1['channels_last_speedup']:.2f}", "", ""])
    rows.append(["flop_utilization_bare (stage 1, bare loop)", f"{s1['flop_utilization_bare']:.2f}", "", ""])
    rows.append(["flop_utilization_ceiling (stage 1 convolutions alone, each timed in isolation)",
                 f"{s1['flop_utilization_ceiling']:.2f}", "", ""])
    if "compile_speedup" in s1:
        rows.append(["compile_speedup (stage 1 bare step, model.compile=true)", f"{s1['compile_speedup']:.2f}", "", ""])
    rows.append(["**figure**", "**ours**", "**baseline**", "**unit**"])
    rows += [
        ["stage 1 epoch: Trainer.fit vs bare loop", f"{s1['fit_images_per_s']:.0f}", f"{s1['bare_images_per_s']:.0f}",
         "images/s"],
        ["stage 1 epoch: Trainer.fit vs seed style", f"{s1['fit_epoch_s']:.2f}", f"{s1['seed_style_epoch_s']:.2f}", "s"],
        ["stage 1 first run: cache build + setup + fit vs seed style", f"{s1['first_run_s']:.2f}",
         f"{s1['seed_style_first_run_s']:.2f}", "s"],
        ["stage 2 epoch: Trainer.fit vs bare loop", f"{s2['fit_windows_per_s']:.0f}", f"{s2['bare_windows_per_s']:.0f}",
         "windows/s"],
        ["stage 2 epoch: Trainer.fit vs seed style", f"{s2['fit_epoch_s']:.2f}", f"{s2['seed_style_epoch_s']:.2f}", "s"],
        ["stage 2 first run: cache build + setup + fit vs seed style", f"{s2['first_run_s']:.2f}",
         f"{s2['seed_style_first_run_s']:.2f}", "s"],
        ["stage 2 epoch (bare): cached latents vs re-encoding", f"{s2['bare_epoch_s']:.2f}",
         f"{s2['bare_reencode_epoch_s']:.2f}", "s"],
        ["stage 2 latent table of the train frames (in the epoch above)", f"{s2['latent_table_s']:.2f}", "", "s"],
        ["frame cache build (once per dataset)", f"{results['cache_build_s']:.2f}", "", "s"],
        ["DataModule alone, stage 1", f"{s1['datamodule_frames_per_s']:.0f}", "", "frames/s"],
        ["DataModule alone, stage 2", f"{s2['datamodule_windows_per_s']:.0f}", "", "windows/s"],
        ["stage 1 model FLOPs (forward + backward)", f"{s1['train_flops_per_image'] / 1e9:.3f}", "", "GFLOP/image"],
        [f"GEMM peak ({results['settings']['precision']})", f"{results['gemm_peak_flops'] / 1e9:.0f}", "", "GFLOP/s"],
    ]
    if "bf16_speedup" in bf16:
        rows.append(["stage 1 bf16-mixed vs fp32", f"{bf16['bf16_images_per_s']:.0f}", f"{bf16['fp32_images_per_s']:.0f}",
                     "images/s"])
        rows.append(["stage 1 val L1 after the same steps, bf16 vs fp32", f"{bf16['bf16_val_l1']:.4f}",
                     f"{bf16['fp32_val_l1']:.4f}", "L1"])
    if "bare_compiled_epoch_s" in s1:
        rows.append(["stage 1 epoch (bare): model.compile=true vs eager", f"{s1['bare_compiled_epoch_s']:.2f}",
                     f"{s1['bare_epoch_s']:.2f}", "s"])
        rows.append(["stage 1 first compiled epoch (compiling)", f"{s1['compiled_first_epoch_s']:.1f}", "", "s"])
    memory = results["memory"]
    rows.append(["peak memory (ru_maxrss)", f"{memory['peak_rss_mib']:.0f}", "", "MiB"])
    if "cuda_max_allocated_mib" in memory:
        rows.append(["peak GPU memory (max_memory_allocated)", f"{memory['cuda_max_allocated_mib']:.0f}", "", "MiB"])
    demo = results["demo"]
    for part in (*STAGES, "total"):
        if f"{part}_s" in demo:
            name = "the whole command" if part == "total" else part
            rows.append([f"demo wall time, {name}", f"{demo[f'{part}_s']:.0f}", "", "s"])
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def quiet() -> None:
    """No Lightning banners or known warnings between the benchmark's own lines."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*self.log.*")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet()
    start = time.perf_counter()
    results = run(args)
    results["bench_wall_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    machine_info = results["machine"]
    print(f"\n{machine_info['cpu']}, {machine_info['cores']} cores, {machine_info.get('gpu', 'no GPU')}; "
          f"load average {machine_info['load_average_at_start']} at start, {machine_info['load_average_at_end']} at end")
    print(f"bf16: {results['bf16']['reason']}")
    print(f"demo wall time: {results['demo'].get('source') or results['demo'].get('reason')}")
    print(f"bench took {results['bench_wall_s']:.0f} s; results in {args.out}")
    return results


if __name__ == "__main__":
    main()
