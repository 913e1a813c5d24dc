"""The caption metrics counted in storyreason.metrics, pinned to the libraries they stand in for (sacrebleu's
BLEU and chrF, torchmetrics' BLEU and ROUGE-L), and independent of the caption tokenizer."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU, CHRF
from torchmetrics.text import BLEUScore, ROUGEScore

from storyreason.data.tokenizer import PAD_ID, CaptionTokenizer
from storyreason.metrics import CharF, CorpusBLEU, RougeL, TokenPerplexity, lcs_length

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


NAMES = ["Sarah", "Tom", "Zo\u00eb"]
PROSE_WORDS = "the a room walked into quiet door light she he said looked at Sarah's twenty-one 3.5".split()
MARKS = [",", ".", "!", "?", '"', ";", "(", ")", "\u2014"]


def prose(n: int, seed: int, shortest: int = 0) -> list[str]:
    """Sentences with names, quotes, commas, possessives and numbers, written with ordinary spacing."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(PROSE_WORDS + NAMES) for _ in range(rng.randint(shortest, 30))]
        text = " ".join(w + (rng.choice(MARKS) if rng.random() < 0.2 else "") for w in words)
        out.append(f'"{text}," she said.' if words and rng.random() < 0.3 else text)
    return out


def scores(generated: list[str], reference: list[str]) -> dict[str, float]:
    """Our BLEU-4, chrF and ROUGE-L of caption pairs, accumulated over batches of 16."""
    metrics = {"bleu": CorpusBLEU(4), "chrf": CharF(), "rougeL": RougeL()}
    for i in range(0, len(generated), 16):
        for metric in metrics.values():
            metric.update(generated[i : i + 16], reference[i : i + 16])
    return {name: metric.compute().item() for name, metric in metrics.items()}


@pytest.mark.parametrize("n_gram", [1, 2, 4])
def test_corpus_bleu_equals_sacrebleu_on_prose(n_gram: int) -> None:
    """sacrebleu's corpus BLEU (13a tokens, no smoothing) on prose with punctuation and empty captions."""
    generated, reference = prose(80, seed=2), prose(80, seed=3, shortest=1)
    generated[:40] = [g if i % 5 else r for i, (g, r) in enumerate(zip(generated[:40], reference[:40]))]
    theirs = BLEU(max_ngram_order=n_gram, smooth_method="none", tokenize="13a").corpus_score(generated, [reference])
    ours = CorpusBLEU(n_gram)
    ours.update(generated, reference)
    assert 0 < theirs.score
    assert 100 * ours.compute().item() == pytest.approx(theirs.score, rel=1e-6)


@pytest.mark.parametrize("seeds", [(4, 5), (6, 6)])
def test_chrf_equals_sacrebleu(seeds: tuple[int, int]) -> None:
    """sacrebleu's CHRF() on prose, short captions and empty generated captions included."""
    generated, reference = prose(60, seed=seeds[0]), prose(60, seed=seeds[1], shortest=1)
    generated[3], reference[4] = "", "up"
    ours = CharF()
    for i in range(0, 60, 25):
        ours.update(generated[i : i + 25], reference[i : i + 25])
    assert 100 * ours.compute().item() == pytest.approx(CHRF().corpus_score(generated, [reference]).score, rel=1e-6)


def test_rouge_l_equals_torchmetrics() -> None:
    generated, reference = prose(60, seed=7), prose(60, seed=8, shortest=1)
    generated[5] = ""
    theirs = ROUGEScore(rouge_keys="rougeL")
    theirs.update(generated, reference)
    assert scores(generated, reference)["rougeL"] == pytest.approx(theirs.compute()["rougeL_fmeasure"].item(), rel=1e-5)


def test_lcs_length_equals_the_dynamic_programme() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.choices("abcd", k=rng.randint(0, 70)), rng.choices("abcd", k=rng.randint(0, 70))
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        assert lcs_length(a, b) == table[-1][-1]


@pytest.mark.parametrize("lowercase", [False, True])
def test_text_metrics_do_not_depend_on_the_caption_tokenizer(lowercase: bool) -> None:
    """The same caption pairs, generated through the word tokenizer and through BPE subwords, score the same
    BLEU, chrF and ROUGE-L against the same references."""
    reference, other = prose(40, seed=10, shortest=1), prose(40, seed=11)
    hypotheses = [r if i % 3 == 0 else r[: len(r) // 2] + o[: len(o) // 2] for i, (r, o) in enumerate(zip(reference, other))]
    word = CaptionTokenizer.fit(reference + hypotheses, "word", lowercase=lowercase)
    bpe = CaptionTokenizer.fit(reference + hypotheses, "bpe", lowercase=lowercase, max_size=400)
    references = [word.normalize(r) for r in reference]
    assert references == [bpe.normalize(r) for r in reference]
    through = {t.kind: [t.decode(t.encode(h, 200)) for h in hypotheses] for t in (word, bpe)}
    assert through["word"] == through["bpe"] == [word.normalize(h) for h in hypotheses]  # both give the text back
    by_word, by_bpe = scores(through["word"], references), scores(through["bpe"], references)
    assert by_word["bleu"] > 0.05
    for name in by_word:
        assert by_word[name] == pytest.approx(by_bpe[name], rel=1e-6), name


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


def test_perplexity_from_the_loss_per_token_values_is_the_same() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(3, 6, 13), torch.randint(4, 13, (3, 6))
    target[0, 4:] = PAD_ID
    given, computed = TokenPerplexity(), TokenPerplexity()
    given.update(logits, target, nll=F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID,
                                                     reduction="none"))
    computed.update(logits, target)
    assert given.compute().item() == pytest.approx(computed.compute().item(), rel=1e-6)
