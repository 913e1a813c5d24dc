"""The caption metrics counted in storyreason.metrics: BLEU as torchmetrics defines it, chrF, ROUGE-L, perplexity."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.text import BLEUScore

from storyreason.data.tokenizer import PAD_ID
from storyreason.metrics import CharF, CorpusBLEU, RougeL, TokenPerplexity

WORDS = "a red blue ball box moves left right up down top middle .".split()


def captions(n: int, seed: int, shortest: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(shortest, 9))) for _ in range(n)]


@pytest.mark.parametrize("n_gram", [1, 2, 3, 4])
def test_corpus_bleu_equals_torchmetrics(n_gram: int) -> None:
    """Same value as torchmetrics' BLEUScore, over three batches, empty generated captions included."""
    generated, reference = captions(60, seed=0), captions(60, seed=1, shortest=1)
    ours, theirs = CorpusBLEU(n_gram), BLEUScore(n_gram=n_gram)
    for i in range(0, 60, 25):
        ours.update(generated[i : i + 25], reference[i : i + 25])
        theirs.update(generated[i : i + 25], [[r] for r in reference[i : i + 25]])
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), rel=1e-6, abs=1e-9)


def test_chrf_orders_captions_by_closeness() -> None:
    """Identical captions score 1 (even shorter than 6 characters), unrelated ones 0, a near miss in between."""
    def chrf(generated: list[str], reference: list[str]) -> float:
        metric = CharF()
        metric.update(generated, reference)
        return metric.compute().item()

    assert chrf(["a red ball", "up"], ["a red ball", "up"]) == pytest.approx(1.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    near, far = chrf(["a red ball moves left"], ["a red ball moves right"]), chrf(["a box"], ["a red ball moves right"])
    assert 0.0 < far < near < 1.0


def test_rouge_l_is_one_tensor() -> None:
    metric = RougeL()
    metric.update(["a red ball moves left", "up"], ["a red ball moves right", "down"])
    value = metric.compute()
    assert value.ndim == 0
    assert value.item() == pytest.approx((0.8 + 0.0) / 2)  # LCS 4 of 5 words; no common word


def test_every_rouge_l_of_a_module_is_found_by_name() -> None:
    """Lightning finds a logged metric's name through `named_modules`: fresh ROUGE metrics must not merge."""
    metrics = torch.nn.ModuleDict({"val": RougeL(), "test": RougeL()})
    assert [name for name, _ in metrics.named_modules()] == ["", "val", "test"]


def test_perplexity_is_exp_of_the_token_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.tensor([[4, 5, 2, PAD_ID, PAD_ID], [6, 2, PAD_ID, PAD_ID, PAD_ID], [7, 8, 9, 10, 2]])
    metric = TokenPerplexity()
    metric.update(logits[:2], target[:2])
    metric.update(logits[2:], target[2:])
    expected = math.exp(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID).item())
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    uniform = TokenPerplexity()
    uniform.update(torch.zeros(1, 4, 11), target[2:, :4])
    assert uniform.compute().item() == pytest.approx(11.0, rel=1e-5)
