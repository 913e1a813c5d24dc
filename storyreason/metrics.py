"""Metric collections (torchmetrics, accumulated over a whole split) shared by both stages and evaluation.

Images: L1, MSE, PSNR, SSIM. Captions: teacher-forced token accuracy and perplexity (they need the
model's token distribution) and free-running token accuracy, all three in the caption tokenizer's
tokens; corpus BLEU-1..4, chrF and ROUGE-L of the generated text, computed on detokenised strings
with one standard tokenisation each (BLEU: sacrebleu's `13a`, as torchmetrics' SacreBLEUScore uses;
chrF: characters without spaces; ROUGE-L: lower-cased letters and digits, as torchmetrics'
ROUGEScore), so they compare across tokenizers and with published work.

BLEU and chrF are counted here once per batch with `Counter`s and ROUGE-L's longest common
subsequence with bit-parallel integers: torchmetrics' own versions update a tensor per n-gram or
fill a Python table per pair and cost seconds to minutes per validation of prose captions (its
chrF about 20 s per 1,000 short captions), which training would pay every epoch. Tests pin each to
the library's values. SSIM is torchmetrics' metric with its Gaussian window applied as matrix
products (`SSIM`), for the same reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

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
            f"{stem}ssim": SSIM(data_range=1.0),
        },
        prefix=prefix,
        compute_groups=False,
    )


def gaussian_taps(sigma: float) -> int:
    """Taps of the Gaussian window torchmetrics' SSIM uses for `sigma` (11 for its default 1.5)."""
    return int(3.5 * sigma + 0.5) * 2 + 1


def gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) matrix W such that W @ x filters the rows of x (size, n) as torchmetrics' SSIM does:
    reflect-pad by half the window, then a normalized 1-D Gaussian, keeping the size."""
    kernel = gaussian_taps(sigma)
    pad = kernel // 2
    offsets = torch.arange(kernel, dtype=torch.float64) - pad
    taps = torch.exp(-((offsets / sigma) ** 2) / 2)
    source = (torch.arange(size)[:, None] + torch.arange(kernel)[None] - pad).abs()  # reflect at 0 ...
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # ... and at size - 1
    window = torch.zeros(size, size, dtype=torch.float64)
    return window.scatter_add_(1, source, (taps / taps.sum()).expand(size, kernel).contiguous())


class SSIM(StructuralSimilarityIndexMeasure):
    """torchmetrics' SSIM (Gaussian window, 11 taps for sigma 1.5, reflect padding, mean over each image),
    computed with the separable window as two matrix products per image, `chunk` images at a time.

    torchmetrics convolves the whole batch with a grouped 11x11 kernel: ~4 GFLOP/s on a CPU, most of
    the time of a validation epoch. Matrix products run at GEMM speed, and chunks small enough to stay
    in the CPU's caches make the elementwise part cheap: ~5x faster, the same values to float rounding.
    The states and `compute` are the parent's, so DDP reduction is unchanged.
    """

    def __init__(self, data_range: float = 1.0, chunk: int | None = None, **kwargs: object) -> None:
        super().__init__(data_range=data_range, **kwargs)
        self.chunk = chunk  # None: 16 on a CPU, the whole batch on an accelerator
        self._windows: dict[tuple, torch.Tensor] = {}

    def _window(self, size: int, like: torch.Tensor) -> torch.Tensor:
        key = (size, like.device, like.dtype)
        if key not in self._windows:
            self._windows[key] = gaussian_window(size, self.sigma).to(like)
        return self._windows[key]

    def _similarity(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N,) mean SSIM per image."""
        rows, cols = self._window(preds.shape[-2], preds), self._window(preds.shape[-1], preds)
        moments = torch.cat([preds, target, preds * preds, target * target, preds * target])
        mu_p, mu_t, pp, tt, pt = (rows @ moments @ cols.T).split(len(preds))
        c1, c2 = (self.k1 * self.data_range) ** 2, (self.k2 * self.data_range) ** 2
        mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
        var_p, var_t = (pp - mu_pp).clamp(min=0), (tt - mu_tt).clamp(min=0)
        ssim = ((2 * mu_pt + c1) * (2 * (pt - mu_pt) + c2)) / ((mu_pp + mu_tt + c1) * (var_p + var_t + c2))
        return ssim.flatten(1).mean(-1)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Like the parent's for its defaults; any other setting (a 3-D image, a data range read from the
        images or a (min, max) to clamp to, a uniform window, full images, no reduction) is the parent's."""
        plain = (
            self.gaussian_kernel and isinstance(self.sigma, (int, float)) and isinstance(self.data_range, float)
            and self.reduction in ("elementwise_mean", "sum")
            and not (self.return_full_image or self.return_contrast_sensitivity)
        )
        paddable = plain and min(preds.shape[-2:]) > gaussian_taps(self.sigma) // 2  # reflect padding needs it
        if not paddable or preds.ndim != 4 or preds.shape != target.shape:
            super().update(preds, target)
            return
        preds, target = preds.contiguous(), target.to(preds.dtype).contiguous()
        chunk = self.chunk or (16 if preds.device.type == "cpu" else len(preds))
        for p, t in zip(preds.split(chunk), target.split(chunk)):
            self.similarity += self._similarity(p, t).sum()
        self.total += len(preds)


def token_accuracy(vocab_size: int) -> MulticlassAccuracy:
    """Share of reference tokens predicted right, position by position; padding in the reference is excluded.

    Fed with generated ids padded after their <eos>, a missing token (reference longer) or an extra
    one (a word where the reference has <eos>) counts as wrong.
    """
    return MulticlassAccuracy(num_classes=vocab_size, average="micro", ignore_index=PAD_ID, validate_args=False)


class TokenPerplexity(Metric):
    """exp(mean cross-entropy) of teacher-forced logits over the reference tokens, padding excluded.

    Each token's negative log-likelihood comes from log-softmax (a confident wrong token gives a
    large value, not an infinite one, as a softmax that underflows to 0 would) in the logits' own
    precision, and is summed in float64: a float64 copy of (B, L, V) logits of prose captions is
    gigabytes per batch.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor, nll: torch.Tensor | None = None) -> None:
        """logits (B, L, V), target (B, L) ids (or (N, V) and (N,)); `nll`: the per-token cross-entropy (0 at
        padding), flat, when the caller already has it, as the loss computes it."""
        if nll is None:
            nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID, reduction="none")
        self.nll += nll.double().sum()
        self.tokens += (target != PAD_ID).sum()

    def compute(self) -> torch.Tensor:
        return (self.nll / self.tokens.clamp(min=1)).exp().float()


def _ngrams(items: Sequence[str], n: int) -> Counter:
    """Counts of the n-grams of a token list, as tuples."""
    return Counter(zip(*(items[i:] for i in range(n))))


def _packed_ngrams(ids: np.ndarray, orders: int) -> np.ndarray:
    """Every n-gram of `ids` (n = 1..orders) as one int64: n in the top bits, then 10 bits per character."""
    codes, code = [], ids
    for n in range(1, min(orders, len(ids)) + 1):
        code = ids if n == 1 else (code[:-1] << 10) | ids[n - 1 :]
        codes.append(code | (n << 60))
    return np.concatenate(codes)


def _char_matches(pred: str, ref: str, orders: int) -> list[int]:
    """Clipped matches of character n-grams, n = 1..orders, of two strings. Each n-gram is packed into one
    integer (its order, and 10 bits per character numbered within the pair) and all orders are counted
    in one numpy pass, several times faster than counting substrings; pairs of over 1,024 distinct
    characters, or orders above 6, count substrings."""
    if not pred or not ref:
        return [0] * orders
    chars, ids = np.unique(np.frombuffer((pred + ref).encode("utf-32-le"), np.uint32), return_inverse=True)
    if len(chars) > 1024 or orders > 6:
        return [sum((Counter(pred[i : i + n] for i in range(len(pred) - n + 1))
                     & Counter(ref[i : i + n] for i in range(len(ref) - n + 1))).values()) for n in range(1, orders + 1)]
    ids = ids.astype(np.int64)
    up, count_p = np.unique(_packed_ngrams(ids[: len(pred)], orders), return_counts=True)
    ur, count_r = np.unique(_packed_ngrams(ids[len(pred) :], orders), return_counts=True)
    common, i, j = np.intersect1d(up, ur, assume_unique=True, return_indices=True)
    matches = np.bincount(common >> 60, weights=np.minimum(count_p[i], count_r[j]), minlength=orders + 1)
    return [int(m) for m in matches[1 : orders + 1]]


tokenize_13a = Tokenizer13a()  # sacrebleu's default: punctuation split off words, as WMT scores BLEU


def bleu_counts(preds: Sequence[str], target: Sequence[str], orders: int = 4) -> torch.Tensor:
    """(2 * orders + 2,) float64: clipped n-gram matches and n-gram totals of the generated captions per
    order, then generated and reference lengths, all in 13a tokens."""
    counts = [0] * (2 * orders + 2)
    for pred, ref in zip(preds, target, strict=True):
        p, r = tokenize_13a(pred).split(), tokenize_13a(ref).split()
        counts[-2] += len(p)
        counts[-1] += len(r)
        for n in range(1, orders + 1):
            counts[n - 1] += sum((_ngrams(p, n) & _ngrams(r, n)).values())
            counts[orders + n - 1] += max(len(p) - n + 1, 0)
    return torch.tensor(counts, dtype=torch.float64)


class CorpusBLEU(Metric):
    """Corpus BLEU-n of 13a tokens: clipped n-gram precisions of orders 1..n, their uniform geometric
    mean and the brevity penalty, no smoothing (sacrebleu's corpus BLEU with `smooth_method="none"`,
    and torchmetrics' SacreBLEUScore).

    One reference per caption: `update(generated, references)` takes two lists of strings. The counts
    always cover orders 1..4, so BLEU-1..4 of one collection can share one count (`update_captions`).
    """

    full_state_update = False
    higher_is_better = True
    orders = 4

    def __init__(self, n_gram: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 1 <= n_gram <= self.orders:
            raise ValueError(f"BLEU order must be in 1..{self.orders}, got {n_gram}")
        self.n_gram = n_gram
        self.add_state("matches", torch.zeros(self.orders, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("totals", torch.zeros(self.orders, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pred_len", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("target_len", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str], counts: torch.Tensor | None = None) -> None:
        """`counts`: `bleu_counts(preds, target)` when the caller already has them (BLEU-1..4 share one count)."""
        counts = bleu_counts(preds, target, self.orders) if counts is None else counts
        counts = counts.to(self.device)
        self.matches += counts[: self.orders]
        self.totals += counts[self.orders : 2 * self.orders]
        self.pred_len += counts[-2]
        self.target_len += counts[-1]

    def compute(self) -> torch.Tensor:
        matches, totals = self.matches[: self.n_gram], self.totals[: self.n_gram]
        if matches.min() == 0:
            return torch.zeros((), device=self.device)
        log_precision = (matches.log() - totals.log()).mean()
        brevity = torch.clamp(1 - self.target_len / self.pred_len, max=0.0)  # log of the brevity penalty
        return (log_precision + brevity).exp().float()


class CharF(Metric):
    """Corpus chrF: character n-grams, n = 1..6, spaces removed, counted over the whole corpus; the
    precisions and recalls are averaged over the orders both sides have n-grams of and combined into
    F-beta (beta 2: recall counts more). sacrebleu's CHRF() default, as a value in [0, 1].
    One reference per caption.
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
            for n, matches in enumerate(_char_matches(p, r, self.n_char_order), start=1):
                counts[0][n - 1] += matches
                counts[1][n - 1] += max(len(p) - n + 1, 0) if len(r) >= n else 0  # as sacrebleu: none without a reference n-gram
                counts[2][n - 1] += max(len(r) - n + 1, 0)
        counts = torch.tensor(counts, dtype=torch.float64, device=self.device)
        self.matches += counts[0]
        self.pred_ngrams += counts[1]
        self.target_ngrams += counts[2]

    def compute(self) -> torch.Tensor:
        orders = (self.pred_ngrams > 0) & (self.target_ngrams > 0)
        if not orders.any():
            return torch.zeros((), device=self.device)
        precision = (self.matches[orders] / self.pred_ngrams[orders]).mean()
        recall = (self.matches[orders] / self.target_ngrams[orders]).mean()
        if precision + recall == 0:
            return torch.zeros((), device=self.device)
        b2 = self.beta**2
        return ((1 + b2) * precision * recall / (b2 * precision + recall)).float()


def rouge_tokens(text: str) -> list[str]:
    """ROUGE's tokens: lower-cased runs of letters and digits (torchmetrics' and rouge-score's default)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, bit-parallel (Hyyrö's algorithm):
    one bit per token of `b`, a few integer operations per token of `a`."""
    if not a or not b:
        return 0
    positions: dict[str, int] = {}
    for i, token in enumerate(b):
        positions[token] = positions.get(token, 0) | (1 << i)
    mask = (1 << len(b)) - 1
    row = mask
    for token in a:
        matches = row & positions.get(token, 0)
        row = ((row + matches) | (row - matches)) & mask
    return len(b) - row.bit_count()


class RougeL(Metric):
    """ROUGE-L F-measure averaged over captions: torchmetrics' ROUGEScore(rouge_keys="rougeL") value,
    with the longest common subsequence computed bit-parallel instead of by a Python table."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("fmeasure", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        total = 0.0
        for pred, ref in zip(preds, target, strict=True):
            p, r = rouge_tokens(pred), rouge_tokens(ref)
            lcs = lcs_length(p, r)
            if lcs:
                total += 2 * lcs / (len(p) + len(r))  # 2PR / (P + R) with P = lcs/|p|, R = lcs/|r|
        self.fmeasure += total
        self.count += len(preds)

    def compute(self) -> torch.Tensor:
        return (self.fmeasure / self.count.clamp(min=1)).float()


def caption_metrics(prefix: str, vocab_size: int) -> MetricCollection:
    """Free-running caption metrics: `gen_token_acc` (position-wise), corpus BLEU-1..4 (`bleu` is
    BLEU-4), `chrf` and `rougeL`."""
    text = {"bleu1": CorpusBLEU(1), "bleu2": CorpusBLEU(2), "bleu3": CorpusBLEU(3), "bleu": CorpusBLEU(4),
            "chrf": CharF(), "rougeL": RougeL()}
    return MetricCollection({"gen_token_acc": token_accuracy(vocab_size), **text}, prefix=prefix, compute_groups=False)


def update_images(metrics: MetricCollection, preds: torch.Tensor, target: torch.Tensor) -> None:
    """Feed (B, 3, H, W) images in [0, 1], in any memory format; predictions are clamped."""
    preds, target = preds.float().clamp(0, 1).contiguous(), target.float().contiguous()
    for metric in metrics.values():
        metric.update(preds, target)


def update_captions(metrics: MetricCollection, generated: torch.Tensor, reference: torch.Tensor,
                    generated_text: list[str], reference_text: list[str]) -> None:
    """Feed (B, L') generated and (B, L) reference ids and their strings to a `caption_metrics` collection.

    Generated ids are cut or padded to the reference's width: past it the reference is padding, which
    the position-wise accuracy ignores, and every reference keeps its <eos> inside that width.
    """
    width = reference.shape[1]
    generated = F.pad(generated[:, :width], (0, width - min(width, generated.shape[1])), value=PAD_ID)
    metrics["gen_token_acc"].update(generated.flatten(), reference.flatten())
    counts = bleu_counts(generated_text, reference_text)
    for name in TEXT_METRICS:
        extra = {"counts": counts} if isinstance(metrics[name], CorpusBLEU) else {}
        metrics[name].update(generated_text, reference_text, **extra)
