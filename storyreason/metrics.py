"""Metric collections (torchmetrics, accumulated over a whole split) shared by both stages and evaluation.

Images: L1, MSE, PSNR, SSIM. Captions: teacher-forced token accuracy and perplexity (they need the
model's token distribution), free-running token accuracy, corpus BLEU-1..4, chrF and ROUGE-L of the
generated text. BLEU and chrF are counted here once per batch with `Counter`s: torchmetrics' own
versions update a tensor per n-gram and cost seconds per validation epoch (its chrF about 20 s per
1,000 captions), which training would pay every epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.text import ROUGEScore

from storyreason.data.tokenizer import PAD_ID

IMAGE_METRICS = ("l1", "mse", "psnr", "ssim")
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu", "chrf", "rougeL")  # of caption strings; `bleu` is BLEU-4


def image_metrics(prefix: str, stem: str = "image_") -> MetricCollection:
    """L1, MSE, PSNR and SSIM of images in [0, 1], keys `prefix + stem + name` (stage 1 uses no stem)."""
    return MetricCollection(
        {
            f"{stem}l1": MeanAbsoluteError(),
            f"{stem}mse": MeanSquaredError(),
            f"{stem}psnr": PeakSignalNoiseRatio(data_range=1.0),
            f"{stem}ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
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


class TokenPerplexity(Metric):
    """exp(mean cross-entropy) of teacher-forced logits over the reference tokens, padding excluded.

    Summed from log-softmax in float64, so a confident wrong token gives a large value instead of
    an infinite one (a softmax that underflows to 0 would).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """logits (B, L, V), target (B, L) ids."""
        nll = F.cross_entropy(logits.flatten(0, 1).double(), target.flatten(), ignore_index=PAD_ID, reduction="sum")
        self.nll += nll
        self.tokens += (target != PAD_ID).sum()

    def compute(self) -> torch.Tensor:
        return (self.nll / self.tokens.clamp(min=1)).exp().float()


def _ngrams(items: Sequence[str] | str, n: int) -> Counter:
    """Counts of the n-grams of a token list (as tuples) or of a string (as substrings)."""
    if isinstance(items, str):
        return Counter(items[i : i + n] for i in range(len(items) - n + 1))
    return Counter(tuple(items[i : i + n]) for i in range(len(items) - n + 1))


class CorpusBLEU(Metric):
    """Corpus BLEU-n of whitespace tokens: clipped n-gram precisions of orders 1..n, their uniform
    geometric mean and the brevity penalty, no smoothing (the value torchmetrics' BLEUScore gives).

    One reference per caption: `update(generated, references)` takes two lists of strings.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_gram: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_gram = n_gram
        self.add_state("matches", torch.zeros(n_gram, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("totals", torch.zeros(n_gram, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pred_len", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("target_len", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        matches, totals = [0] * self.n_gram, [0] * self.n_gram
        pred_len = target_len = 0
        for pred, ref in zip(preds, target, strict=True):
            p, r = pred.split(), ref.split()
            pred_len, target_len = pred_len + len(p), target_len + len(r)
            for n in range(1, self.n_gram + 1):
                matches[n - 1] += sum((_ngrams(p, n) & _ngrams(r, n)).values())
                totals[n - 1] += max(len(p) - n + 1, 0)
        self.matches += torch.tensor(matches, dtype=torch.float64, device=self.device)
        self.totals += torch.tensor(totals, dtype=torch.float64, device=self.device)
        self.pred_len += pred_len
        self.target_len += target_len

    def compute(self) -> torch.Tensor:
        if self.matches.min() == 0:
            return torch.zeros((), device=self.device)
        log_precision = (self.matches.log() - self.totals.log()).mean()
        brevity = torch.clamp(1 - self.target_len / self.pred_len, max=0.0)  # log of the brevity penalty
        return (log_precision + brevity).exp().float()


class CharF(Metric):
    """Corpus chrF: F-beta (beta 2: recall counts more) of character n-grams, n = 1..6, spaces removed.

    Matches and n-gram counts are summed over the corpus per order; the score is the mean F over
    the orders the references have n-grams of, so a caption shorter than 6 characters can still
    score 1. One reference per caption; values in [0, 1].
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_char_order: int = 6, beta: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_char_order, self.beta = n_char_order, beta
        for name in ("matches", "pred_ngrams", "target_ngrams"):
            self.add_state(name, torch.zeros(n_char_order, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        counts = [[0] * self.n_char_order for _ in range(3)]  # matches, pred n-grams, target n-grams
        for pred, ref in zip(preds, target, strict=True):
            p, r = "".join(pred.split()), "".join(ref.split())
            for n in range(1, self.n_char_order + 1):
                counts[0][n - 1] += sum((_ngrams(p, n) & _ngrams(r, n)).values())
                counts[1][n - 1] += max(len(p) - n + 1, 0)
                counts[2][n - 1] += max(len(r) - n + 1, 0)
        counts = torch.tensor(counts, dtype=torch.float64, device=self.device)
        self.matches += counts[0]
        self.pred_ngrams += counts[1]
        self.target_ngrams += counts[2]

    def compute(self) -> torch.Tensor:
        orders = self.target_ngrams > 0
        if not orders.any():
            return torch.zeros((), device=self.device)
        precision = self.matches / self.pred_ngrams.clamp(min=1)
        recall = self.matches / self.target_ngrams.clamp(min=1)
        b2 = self.beta**2
        f = (1 + b2) * precision * recall / (b2 * precision + recall).clamp(min=1e-12)
        return f[orders].mean().float()


class RougeL(ROUGEScore):
    """ROUGE-L F-measure, averaged over captions, as one tensor (Lightning logs only tensors).

    Built with the rougeL key alone: the default keys include rougeLsum, whose sentence splitter
    downloads nltk data at first use and fails offline.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(rouge_keys=("rougeL",), **kwargs)

    def compute(self) -> torch.Tensor:
        return super().compute()["rougeL_fmeasure"]

    def __hash__(self) -> int:
        """By identity. ROUGEScore hashes its states alone, so two instances with equal states (two
        fresh ones) compare equal, `named_modules` lists only one, and Lightning cannot find the
        other's name when it is logged."""
        return id(self)


def caption_metrics(prefix: str, vocab_size: int) -> MetricCollection:
    """Free-running caption metrics: `gen_token_acc` (position-wise), corpus BLEU-1..4 (`bleu` is
    BLEU-4), `chrf` and `rougeL`."""
    text = {"bleu1": CorpusBLEU(1), "bleu2": CorpusBLEU(2), "bleu3": CorpusBLEU(3), "bleu": CorpusBLEU(4),
            "chrf": CharF(), "rougeL": RougeL()}
    return MetricCollection({"gen_token_acc": token_accuracy(vocab_size), **text}, prefix=prefix, compute_groups=False)


def update_images(metrics: MetricCollection, preds: torch.Tensor, target: torch.Tensor) -> None:
    """Feed (B, 3, H, W) images in [0, 1]; predictions are clamped, any memory format is accepted.

    SSIM gets them channels-last: its per-channel 11x11 Gaussian convolution, most of the cost of
    scoring images, runs about 1.6x faster so on a CPU. The elementwise metrics flatten theirs.
    """
    preds, target = preds.float().clamp(0, 1), target.float()
    plain = preds.contiguous(), target.contiguous()
    last = preds.contiguous(memory_format=torch.channels_last), target.contiguous(memory_format=torch.channels_last)
    for metric in metrics.values():
        metric.update(*(last if isinstance(metric, StructuralSimilarityIndexMeasure) else plain))


def update_captions(metrics: MetricCollection, generated: torch.Tensor, reference: torch.Tensor,
                    generated_text: list[str], reference_text: list[str]) -> None:
    """Feed (B, L') generated and (B, L) reference ids and their strings to a `caption_metrics` collection.

    Generated ids are cut or padded to the reference's width: past it the reference is padding, which
    the position-wise accuracy ignores, and every reference keeps its <eos> inside that width.
    """
    width = reference.shape[1]
    generated = F.pad(generated[:, :width], (0, width - min(width, generated.shape[1])), value=PAD_ID)
    metrics["gen_token_acc"].update(generated.flatten(), reference.flatten())
    for name in TEXT_METRICS:
        metrics[name].update(generated_text, reference_text)
