"""Metric collections (torchmetrics, accumulated over a whole split) shared by both stages."""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.text import BLEUScore

from storyreason.data.tokenizer import PAD_ID


def image_metrics(prefix: str, names: tuple[str, str, str] = ("image_l1", "image_psnr", "image_ssim")) -> MetricCollection:
    """L1, PSNR and SSIM of images in [0, 1], keys `prefix + name`."""
    l1, psnr, ssim = names
    return MetricCollection(
        {
            l1: MeanAbsoluteError(),
            psnr: PeakSignalNoiseRatio(data_range=1.0),
            ssim: StructuralSimilarityIndexMeasure(data_range=1.0),
        },
        prefix=prefix,
        compute_groups=False,
    )


def token_accuracy(vocab_size: int) -> MulticlassAccuracy:
    """Share of reference tokens predicted right, position by position; padding in the reference is excluded.

    Fed with generated ids padded after their <eos>, a missing token (reference longer) or an extra
    one (a word where the reference has <eos>) counts as wrong.
    """
    return MulticlassAccuracy(num_classes=vocab_size, average="micro", ignore_index=PAD_ID, validate_args=False)


def caption_metrics(prefix: str, vocab_size: int) -> MetricCollection:
    """Free-running caption metrics: `gen_token_acc` (position-wise) and corpus `bleu` (BLEU-4)."""
    return MetricCollection(
        {"gen_token_acc": token_accuracy(vocab_size), "bleu": BLEUScore(n_gram=4)}, prefix=prefix, compute_groups=False
    )


def update_images(metrics: MetricCollection, preds: torch.Tensor, target: torch.Tensor) -> None:
    """Feed (B, 3, H, W) images in [0, 1]; predictions are clamped, any memory format is accepted."""
    metrics.update(preds.float().clamp(0, 1).contiguous(), target.float().contiguous())


def update_captions(metrics: MetricCollection, generated: torch.Tensor, reference: torch.Tensor,
                    generated_text: list[str], reference_text: list[str]) -> None:
    """Feed (B, L) ids and their strings to a `caption_metrics` collection."""
    metrics["gen_token_acc"].update(generated.flatten(), reference.flatten())
    metrics["bleu"].update(generated_text, [[r] for r in reference_text])
