"""The mean training step of a stage-2 recipe, to compare what options cost per step on this machine.

    .venv/bin/python benchmarks/step_time.py [--steps 110] [--skip 10] experiment=prose_demo [KEY=VALUE ...]

Composes conf/ as train.py does (stage=multimodal and the overrides given), trains `--steps` steps of the
first epoch without validation or loggers, and prints the mean seconds of the steps after the first
`--skip` (the first ones pay for the latent cache and the allocator's first requests) and the mean caption
width of those steps' batches. The run's directory is a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storyreason.demo import cpu_name  # noqa: E402  (the repository is put on sys.path above)
from storyreason.run import train  # noqa: E402


class StepTimer(L.Callback):
    """Times steps `skip` .. `steps` - 1 of the first epoch, stops the fit there and prints the figures."""

    def __init__(self, steps: int, skip: int, label: str) -> None:
        self.steps, self.skip, self.label = steps, skip, label
        self.seconds: list[float] = []
        self.widths: list[int] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx >= self.skip:
            self.seconds.append(time.perf_counter() - self._start)
            self.widths.append(batch["target_caption"].shape[1])
        if batch_idx + 1 >= self.steps:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if len(self.seconds) < self.steps - self.skip:
            raise SystemExit(f"step_time.py: the first epoch has only {self.skip + len(self.seconds)} steps; "
                             f"ask for fewer (--steps) or a larger train split")
        print(f"{cpu_name()}, {torch.get_num_threads()} threads, {self.label}: "
              f"steps {self.skip}-{self.skip + len(self.seconds) - 1}: mean {statistics.mean(self.seconds):.4f} s a "
              f"step, median {statistics.median(self.seconds):.4f} s, mean caption width "
              f"{statistics.mean(self.widths):.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=110, help="training steps to run (default 110)")
    parser.add_argument("--skip", type=int, default=10, help="first steps left out of the mean (default 10)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=prose_demo")
    args = parser.parse_args()
    if not 0 <= args.skip < args.steps:
        parser.error(f"--skip must be at least 0 and below --steps, got {args.skip} and {args.steps}")
    with tempfile.TemporaryDirectory(prefix="storyreason-steps-") as tmp:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "stage=multimodal", *args.overrides, "trainer.limit_val_batches=0", "trainer.limit_test_batches=0",
                "trainer.max_epochs=1"])
        with open_dict(cfg):
            cfg.paths.output_dir = tmp
            cfg.logger = None
            cfg.trainer.enable_progress_bar = False  # the figures alone: no bar, no checkpoints to save
            cfg.trainer.enable_checkpointing = False
            cfg.callbacks = {"step_timer": {"_target_": f"{__name__}.StepTimer", "steps": args.steps,
                                            "skip": args.skip, "label": " ".join(args.overrides) or "the defaults"}}
        train(cfg)


if __name__ == "__main__":
    main()
