"""The LightningDataModule: cached stories -> tokenized captions -> frames (stage 1) or windows (stage 2)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from storyreason.data.cache import StorySource, build_cache, cache_path, load_cache
from storyreason.data.errors import DataError
from storyreason.data.samplers import EpochSampler
from storyreason.data.stories import SPLITS, StorySplit
from storyreason.data.tokenizer import UNK_ID, CaptionTokenizer, caption_length, pad_captions
from storyreason.data.windows import FrameDataset, WindowDataset, collate_batch, window_index
from storyreason.errors import ConfigError

log = logging.getLogger(__name__)
# Lightning looks for state_dict() on the loader; this datamodule restores the train position itself
# (state_dict/load_state_dict below), so a mid-epoch resume is exact and that warning is wrong here.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
# Batches are one index into in-memory tensors (on the GPU with data.resident), so loader workers would
# only add overhead; Lightning's advice to add them does not apply here.
warnings.filterwarnings("ignore", message=".*does not have many workers which may be a bottleneck")
LENGTH_CHUNK_BATCHES = 50  # data.group_by_length sorts the train order in chunks of this many batches


class StoryDataModule(L.LightningDataModule):
    """Serves one story source as frames (`item=frames`) or windows of `context` + 1 frames.

    Frames stay uint8 tensors in memory; models scale them to [0, 1] on the batch. The caption
    tokenizer (`tokenizer`: word or bpe) is fitted on the train split, or restored from
    `tokenizer_state` (a checkpoint's). `max_caption_len="auto"` is the smallest length that holds
    `caption_coverage` of the train captions whole; `text_stats` reports the vocabulary size, the
    caption length, each split's truncated share and the test split's <unk> rate.
    `path` and `skip_bad` are the input settings of the file-based sources, kept at data level so
    the command line reads `data.path=...`; their configs interpolate them into `source:`. Stories
    the source skipped are listed in `report_dir/skipped_stories.json` (the run directory).

    The train order is a permutation per epoch drawn from the run's seed and the epoch; checkpoints
    hold how many batches of the current epoch were trained (`state_dict`), so a resumed run goes on
    with the next batch of the same order.

    Loader settings follow the trainer's device: with `resident="auto"` every split's tensors move to
    the GPU the trainer runs on (a batch is then one index on the device, no host copy per step), and
    with `pin_memory=None` host batches are pinned only when a GPU consumes them.

    With `story_batches` (windows only) the train order shuffles stories, not windows, and keeps each
    story's windows together: a batch then holds whole stories, whose overlapping windows share their
    context frames, and the stage-2 model encodes each shared frame once per batch. With
    `group_by_length` (windows only) the train order is also sorted by caption length within chunks of
    50 batches, whose batches are then shuffled (`EpochSampler`), so a batch is padded to about its own
    captions' length: paragraphs of 40 to 130 tokens otherwise pad a quarter of every batch's caption steps.
    """

    def __init__(
        self,
        source: StorySource,
        item: str = "windows",
        image_size: int = 64,
        context: int = 4,
        stride: int = 1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        max_caption_len: int | str = "auto",
        caption_coverage: float = 0.99,
        tokenizer: str = "word",
        lowercase: bool = False,
        vocab_min_count: int = 1,
        vocab_max_size: int | None = None,
        tokenizer_state: str | None = None,
        cache_dir: str = ".cache/storyreason",
        num_workers: int = 0,
        pin_memory: bool | None = None,
        resident: bool | str = "auto",
        story_batches: bool = True,
        group_by_length: bool = False,
        path: str | None = None,
        skip_bad: bool = False,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        if item not in ("frames", "windows"):
            raise ConfigError(f"data.item must be 'frames' or 'windows', got {item!r}")
        if context < 1:
            raise ConfigError(f"data.context must be >= 1, got {context}")
        if stride < 1:
            raise ConfigError(f"data.stride must be >= 1, got {stride}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.image_size = image_size
        self.item, self.context, self.stride = item, context, stride
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if max_caption_len != "auto" and not (isinstance(max_caption_len, int) and max_caption_len >= 2):
            raise ConfigError(f"data.max_caption_len must be an integer >= 2 or auto, got {max_caption_len!r}")
        self.max_caption_len = max_caption_len
        self.caption_coverage = caption_coverage
        self.tokenizer_settings = {"kind": tokenizer, "lowercase": lowercase, "min_count": vocab_min_count,
                                   "max_size": vocab_max_size}
        self.cache_dir = cache_dir
        if resident not in (True, False, "auto"):
            raise ConfigError(f"data.resident must be true, false or auto, got {resident!r}")
        if resident is True and num_workers > 0:
            raise ConfigError(f"data.resident=true keeps batches on the GPU, where loader workers cannot reach; "
                             f"set data.num_workers=0 (got {num_workers})")
        self.num_workers, self.pin_memory, self.resident = num_workers, pin_memory, resident
        self.story_batches, self.group_by_length = story_batches, group_by_length
        self.tokenizer = CaptionTokenizer.from_json(tokenizer_state) if tokenizer_state else None
        self.references: dict[str, list[str]] = {}  # each frame's caption as generated text is scored against
        self.oracle_references: dict[str, list[str]] = {}  # each frame's oracle caption, where the source has one
        self.text_stats: dict[str, float] = {}
        self.path, self.skip_bad = path, skip_bad
        self.report_dir = report_dir
        self.splits: dict[str, StorySplit] = {}
        self.frames: dict[str, torch.Tensor] = {}
        self.datasets: dict[str, Dataset] = {}
        self._train_position: dict[str, int] | None = None  # restored from a checkpoint, used once

    def prepare_data(self) -> None:
        """Build the frame cache once (rank 0 only under DDP)."""
        build_cache(self.source, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self._load()
        gpu = self._trainer_gpu()
        if gpu is not None and (self.resident is True or (self.resident == "auto" and self.num_workers == 0)):
            self.to_device(gpu)

    def to_device(self, device: torch.device | str) -> None:
        """Move every split's frames, captions and windows to `device` (frames are uint8: 12 KiB each at 64x64)."""
        for split, dataset in self.datasets.items():
            dataset.to(device)
            self.frames[split] = dataset.frames

    def _trainer_gpu(self) -> torch.device | None:
        """The GPU the attached trainer trains on; None without a trainer or on a CPU."""
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        return device if device is not None and device.type == "cuda" else None

    def _pin_memory(self, split: str) -> bool:
        """`pin_memory`, or where it is None: pin host batches that a GPU will consume."""
        if self.pin_memory is not None:
            return self.pin_memory
        return self._trainer_gpu() is not None and self.frames[split].device.type == "cpu"

    def _load(self) -> None:
        """Splits from the cache, the tokenizer and each split's dataset, on the CPU."""
        self.splits = load_cache(cache_path(self.source, self.cache_dir))
        self._report_skipped()
        if self.tokenizer is None and self.item == "windows":
            self.tokenizer = CaptionTokenizer.fit(self.splits["train"].captions, **self.tokenizer_settings)
        for split in SPLITS:
            data = self.splits[split]
            if data.frames.shape[2:] != (self.image_size, self.image_size):
                raise ValueError(
                    f"{split} frames are {tuple(data.frames.shape[2:])} but data.image_size={self.image_size}"
                )
            frames = torch.from_numpy(data.frames)
            self.frames[split] = frames
            if self.item == "frames":
                self.datasets[split] = FrameDataset(frames)
                continue
            tokens, lengths = self._tokenize(split, data.captions)
            windows = window_index(data.offsets, self.context, self.stride)
            short = int((data.story_lengths <= self.context).sum())
            if short:
                log.warning("%s: skipped %d of %d stories shorter than data.context + 1 = %d frames",
                            split, short, data.num_stories, self.context + 1)
            self.datasets[split] = WindowDataset(frames, torch.from_numpy(tokens), torch.from_numpy(lengths),
                                                 torch.from_numpy(windows), self._oracle(split),
                                                 None if data.regions is None else torch.from_numpy(data.regions))
        self._require_items("train")

    def _tokenize(self, split: str, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded ids and lengths of a split's captions; the train split fixes an `auto` caption length."""
        token_ids = self.tokenizer.token_ids(captions)
        full = np.array([len(ids) + 1 for ids in token_ids], np.int64)  # <eos> included
        if self.max_caption_len == "auto":
            self.max_caption_len = caption_length(full, self.caption_coverage)
            log.info("data.max_caption_len=auto: %d tokens hold %.1f%% of the train captions whole",
                     self.max_caption_len, 100 * self.caption_coverage)
        truncated = float((full > self.max_caption_len).mean()) if len(full) else 0.0
        unknown = sum(ids.count(UNK_ID) for ids in token_ids) / max(int(full.sum()) - len(full), 1)
        log.info("%s: %.1f%% of %d captions truncated to data.max_caption_len=%d tokens; %.2f%% of tokens <unk>",
                 split, 100 * truncated, len(captions), self.max_caption_len, 100 * unknown)
        self.text_stats |= {"vocab_size": len(self.tokenizer), "max_caption_len": self.max_caption_len,
                            f"{split}_truncated_share": truncated, f"{split}_unk_rate": unknown}
        if split == "train":
            log.info("caption tokenizer: %s, %d entries", self.tokenizer.kind, len(self.tokenizer))
        self.references[split] = [self.tokenizer.normalize(c) for c in captions]
        return pad_captions(token_ids, self.max_caption_len)

    def _oracle(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Oracle frames, caption ids and lengths of every frame of an evaluated split, where the source has
        them (the train split is never scored, so it gets none)."""
        data = self.splits[split]
        if data.oracle is None or split == "train":
            return None
        captions = data.oracle.all_captions(data.captions)
        tokens, lengths = pad_captions(self.tokenizer.token_ids(captions), self.max_caption_len)
        self.oracle_references[split] = [self.tokenizer.normalize(c) for c in captions]
        frames = data.oracle.all_frames(data.frames)
        return torch.from_numpy(frames), torch.from_numpy(tokens), torch.from_numpy(lengths)

    def _require_items(self, split: str) -> None:
        """An error when short stories left `split` without a single window."""
        if len(self.datasets[split]) == 0:
            longest = int(self.splits[split].story_lengths.max(initial=0))
            raise DataError(
                f"no {split} {self.item}: data.context={self.context} needs stories of at least "
                f"{self.context + 1} frames, the longest {split} story has {longest}"
            )

    def _report_skipped(self) -> None:
        """Log how many stories the source left out and list them in the run directory."""
        skipped = {split: self.splits[split].skipped for split in SPLITS if self.splits[split].skipped}
        if not skipped:
            return
        log.warning("the source skipped %s stories (%s)", sum(map(len, skipped.values())),
                    ", ".join(f"{split}: {len(items)}" for split, items in skipped.items()))
        if self.report_dir is not None and (self.trainer is None or self.trainer.is_global_zero):
            report = Path(self.report_dir) / "skipped_stories.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(skipped, indent=1))
            log.warning("skipped stories listed in %s", report)

    def story_index(self, split: str) -> np.ndarray:
        """Story number (0 .. S - 1) of every window (or frame) of `split`, in dataset order."""
        data = self.splits[split]
        owner = np.repeat(np.arange(data.num_stories), data.story_lengths)
        return owner if self.item == "frames" else owner[self.datasets[split].windows[:, -1].cpu().numpy()]

    def target_frames(self, split: str) -> np.ndarray:
        """Frame number (0-based, within its story) of every window's target in `split`, in dataset order."""
        target = self.datasets[split].windows[:, -1].cpu().numpy()
        return target - self.splits[split].offsets[self.story_index(split)]

    def story_ids(self, split: str) -> list[str]:
        """Story id of every window (or frame) of `split`, in dataset order."""
        story_ids = self.splits[split].story_ids
        return [story_ids[s] for s in self.story_index(split)]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self._require_items(split)
        sampler = self._train_sampler() if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=sampler,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
            pin_memory=self._pin_memory(split),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # iterating never draws from the global RNG a checkpoint restores
        )

    def _train_sampler(self) -> EpochSampler:
        """This rank's share of the epoch's permutation, seeded like Lightning's own DistributedSampler
        (by `seed_everything`); a restored position skips the batches already trained on."""
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        windows = self.item == "windows"
        sampler = EpochSampler(
            self.datasets["train"],
            num_replicas=replicas,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            groups=self.story_index("train") if self.story_batches and windows else None,
            lengths=self.datasets["train"].widths().cpu().numpy() if self.group_by_length and windows else None,
            chunk=LENGTH_CHUNK_BATCHES * self.batch_size * replicas,
            batch=self.batch_size * replicas,
        )
        if self._train_position is not None:
            sampler.set_epoch(self._train_position["epoch"])
            sampler.skip = self._train_position["batches"] * self.batch_size
            self._train_position = None
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """Where training is in the train order: the epoch and its batches trained so far."""
        if self.trainer is None:
            return {}
        epoch = self.trainer.current_epoch
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"train_position": {"epoch": epoch, "batches": done}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores this before it first asks for the train loader."""
        self._train_position = state_dict.get("train_position")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
