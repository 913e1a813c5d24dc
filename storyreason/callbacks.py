"""Lightning callbacks: sample grids and captions for TensorBoard and the run's samples/ folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


class SampleLogger(L.Callback):
    """Each validation epoch: an image grid (one row per sample) and caption text in TensorBoard.
    At test end: the same for the test split, written as PNG grids and a text file under `samples/`.

    The samples are the first `num_samples` items of the split, so epochs are comparable.
    """

    def __init__(self, num_samples: int = 8, num_grids: int = 2, out_dir: str = "samples") -> None:
        self.num_samples, self.num_grids, self.out_dir = num_samples, num_grids, out_dir

    def _batch(self, trainer: L.Trainer, split: str, start: int) -> dict[str, torch.Tensor] | None:
        dataset = trainer.datamodule.datasets[split]
        if start >= len(dataset):
            return None
        batch = dataset.__getitems__(list(range(start, min(start + self.num_samples, len(dataset)))))
        return {k: v.to(trainer.lightning_module.device) for k, v in batch.items()}

    @staticmethod
    def _grid(rows: list[torch.Tensor]) -> torch.Tensor:
        return make_grid(torch.cat(rows), nrow=len(rows[0]), padding=2, pad_value=1.0)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        batch = self._batch(trainer, "val", 0)
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if batch is None or logger is None:
            return
        rows, lines = pl_module.samples(batch, "val")
        logger.experiment.add_image("val/samples", self._grid(rows), trainer.global_step)
        if lines:
            text = "\n\n".join(line.replace("\n", "  \n") for line in lines)
            logger.experiment.add_text("val/captions", text, trainer.global_step)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(trainer.default_root_dir) / self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        all_lines = []
        for g in range(self.num_grids):
            batch = self._batch(trainer, "test", g * self.num_samples)
            if batch is None:
                break
            rows, lines = pl_module.samples(batch, "test")
            save_image(self._grid(rows), out / f"test_grid_{g}.png")
            all_lines += lines
        if all_lines:
            (out / "test_captions.txt").write_text("\n\n".join(all_lines) + "\n")
