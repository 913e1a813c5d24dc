"""Every metric equals a hand computation on a small example, accumulated over more than one batch."""

from __future__ import annotations

import math

import pytest
import torch

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from torchmetrics.image import StructuralSimilarityIndexMeasure

from storyreason.metrics import SSIM, caption_metrics, image_metrics, token_accuracy, update_captions, update_images

VOCAB = 12
P, E = PAD_ID, EOS_ID


def test_token_accuracy_excludes_padding() -> None:
    """Positions where the reference is <pad> count neither as right nor as wrong."""
    reference = torch.tensor([[5, 6, 7, E, P, P], [8, E, P, P, P, P]])
    predicted = torch.tensor([[5, 9, 7, E, 5, 6], [8, 9, 4, 4, 4, 4]])  # right: 5, 7, E | 8
    metric = token_accuracy(VOCAB)
    metric.update(predicted.flatten(), reference.flatten())
    assert metric.compute().item() == pytest.approx(4 / 6)


def test_gen_token_acc_counts_missing_and_extra_tokens_as_wrong() -> None:
    """Greedy ids padded after <eos> vs the reference up to its length, <eos> included."""
    reference = torch.tensor(
        [
            [5, 6, 7, E, P, P],  # generated stops early: 7 and <eos> missing
            [5, E, P, P, P, P],  # generated goes on: a word where the reference has <eos>
            [9, 10, E, P, P, P],  # exact
        ]
    )
    generated = torch.tensor(
        [
            [5, 6, E, P, P, P],
            [5, 6, 7, E, P, P],
            [9, 10, E, P, P, P],
        ]
    )
    metrics = caption_metrics("val/", VOCAB)
    update_captions(metrics, generated, reference, ["x"] * 3, ["x"] * 3)
    # row 0: 2 of 4 right; row 1: 1 of 2; row 2: 3 of 3
    assert metrics.compute()["val/gen_token_acc"].item() == pytest.approx(6 / 9)


def test_bleu4_by_hand() -> None:
    """Corpus BLEU-4 of one sentence: the geometric mean of the four n-gram precisions (no brevity penalty)."""
    metrics = caption_metrics("test/", VOCAB)
    ids = torch.tensor([[4, E]])
    update_captions(metrics, ids, ids, ["a b c d f"], ["a b c d e"])
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert metrics.compute()["test/bleu"].item() == pytest.approx(expected, rel=1e-5)


def test_caption_metrics_accumulate_over_batches() -> None:
    """Two batches give corpus statistics over both, not the mean of per-batch scores."""
    metrics = caption_metrics("test/", VOCAB)
    update_captions(metrics, torch.tensor([[5, 6, E, P]]), torch.tensor([[5, 7, 8, E]]), ["a b c d f"], ["a b c d e"])
    update_captions(metrics, torch.tensor([[5, E, P, P]]), torch.tensor([[5, E, P, P]]), ["w x y z"], ["w x y z"])
    result = metrics.compute()
    # n-gram matches / candidates over both sentences: 1-grams (4+4)/(5+4), 2-grams (3+3)/(4+3), ...
    bleu = (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert result["test/bleu"].item() == pytest.approx(bleu, rel=1e-5)
    # tokens: batch 1 has 1 of 4 right, batch 2 has 2 of 2 right
    assert result["test/gen_token_acc"].item() == pytest.approx(3 / 6)


def test_image_l1_and_psnr_accumulate_over_batches() -> None:
    """L1 and PSNR over all pixels of two batches of different sizes, by hand."""
    metrics = image_metrics("val/")
    target = torch.full((4, 3, 8, 8), 0.5)
    update_images(metrics, target[:1] + 0.1, target[:1])  # 1 image, error 0.1
    update_images(metrics, target[1:] - 0.3, target[1:])  # 3 images, error 0.3
    result = metrics.compute()
    l1 = (1 * 0.1 + 3 * 0.3) / 4  # 0.25; the mean of the two batch means would be 0.2
    mse = (1 * 0.1**2 + 3 * 0.3**2) / 4
    assert result["val/image_l1"].item() == pytest.approx(l1, rel=1e-5)
    assert result["val/image_psnr"].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_image_metrics_clamp_predictions_and_score_identical_images_perfectly() -> None:
    """Predictions outside [0, 1] are clamped before scoring; an exact prediction has L1 0 and SSIM 1."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 16, 16)
    exact = image_metrics("test/")
    update_images(exact, target, target)
    result = exact.compute()
    assert result["test/image_l1"].item() == pytest.approx(0.0, abs=1e-7)
    assert result["test/image_ssim"].item() == pytest.approx(1.0, abs=1e-5)

    overshoot = image_metrics("test/")
    update_images(overshoot, torch.full_like(target, 3.0), target)
    assert overshoot.compute()["test/image_l1"].item() == pytest.approx((1 - target).mean().item(), rel=1e-5)



@pytest.mark.parametrize("shape", [(37, 3, 64, 64), (5, 1, 24, 40), (3, 3, 7, 9)])
def test_ssim_equals_torchmetrics_over_batches_and_chunks(shape: tuple[int, ...]) -> None:
    """Our SSIM (window as matrix products, in chunks) gives torchmetrics' value over batches whose
    sizes are no multiple of the chunk, for square, oblong and barely paddable images."""
    torch.manual_seed(0)
    target = torch.rand(shape)
    preds = (target + 0.2 * torch.randn(shape)).clamp(0, 1)
    ours, theirs = SSIM(data_range=1.0, chunk=16), StructuralSimilarityIndexMeasure(data_range=1.0)
    for metric in (ours, theirs):
        for part in (slice(0, 2), slice(2, None)):
            metric.update(preds[part], target[part])
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-6)
    assert 0.05 < ours.compute().item() < 0.95  # the noise is neither negligible nor everything


def test_ssim_leaves_other_settings_to_torchmetrics() -> None:
    """A uniform window is not ours to compute: the parent's update scores it."""
    torch.manual_seed(0)
    target = torch.rand(4, 3, 16, 16)
    preds = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    ours = SSIM(data_range=1.0, gaussian_kernel=False, kernel_size=5)
    theirs = StructuralSimilarityIndexMeasure(data_range=1.0, gaussian_kernel=False, kernel_size=5)
    ours.update(preds, target)
    theirs.update(preds, target)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-7)
    assert ours.compute().item() != pytest.approx(SSIM(data_range=1.0)(preds, target).item(), abs=1e-3)
