"""The stage-2 story model's training step at the StoryReasoning recipe's full-scale shapes, by caption loss.

    .venv/bin/python benchmarks/bench_caption_loss.py [--batch 64] [--vocab 7465] [--max-len 120] [--rounds 3]
                                                      [--threads N] [--decoder attention|pointer]

One story batch (windows of one long story: shared context frames, as story batches have), captions of
50 to `--max-len` tokens, forward + backward + Adam of the story model (the frozen autoencoder's part of a
step does not depend on the loss). Contestants, timed in turn each round: the logits (B, L, V) and
`F.cross_entropy` (the previous step), `StoryModel.caption_loss` (tokens only, fused projection + loss),
and both under bf16 autocast (`trainer.precision=bf16-mixed`). Prints each median and its speedup.
`--decoder pointer` times the copying decoder (`model/story/caption_memory=pointer`), whose logits are
its mixed log-probabilities and whose `caption_loss` reads the target's only (at the prose world's
shapes: `--vocab 846 --max-len 109`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from storyreason.data.tokenizer import PAD_ID
from storyreason.models.story import PointerCaptionDecoder, StoryModel

LATENT_DIM = 384


def story_batch(batch: int, vocab: int, max_len: int, context: int = 4) -> dict[str, torch.Tensor]:
    """Windows 0..batch-1 of one story of batch + context frames: latents, captions, frame ids, targets."""
    frames = torch.arange(batch)[:, None] + torch.arange(context + 1)[None]  # (B, K + 1)
    lengths = torch.randint(50, max_len + 1, (batch + context,))
    lengths[0] = max_len  # a batch is cut to its longest caption
    captions = torch.randint(4, vocab, (batch + context, max_len))
    captions[torch.arange(max_len)[None] >= lengths[:, None]] = PAD_ID
    return {"latents": torch.randn(batch + context, LATENT_DIM)[frames[:, :-1]], "captions": captions[frames[:, :-1]],
            "lengths": lengths[frames[:, :-1]], "frame_ids": frames[:, :-1], "target": captions[frames[:, -1]]}


def logits_loss(model: StoryModel, enc, target: torch.Tensor) -> torch.Tensor:
    logits = model.caption_logits(enc, target).float()
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID)


def fused_loss(model: StoryModel, enc, target: torch.Tensor) -> torch.Tensor:
    return model.caption_loss(enc, target)


def step_fn(model: StoryModel, optimizer: torch.optim.Optimizer, batch: dict, loss: Callable, bf16: bool) -> Callable:
    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            enc = model.encode(batch["latents"], batch["captions"], batch["lengths"], batch["frame_ids"])
            value = loss(model, enc, batch["target"])
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start
    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="windows per batch (the recipe's batch_size)")
    parser.add_argument("--vocab", type=int, default=7465, help="vocabulary (the full-scale stand-in's)")
    parser.add_argument("--max-len", type=int, default=120, help="tokens per caption (the stand-in's max_caption_len)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--decoder", choices=("attention", "pointer"), default="attention",
                        help="the caption decoder (model/story/caption_memory)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    extra = {"caption_memory": PointerCaptionDecoder} if args.decoder == "pointer" else {}
    model = StoryModel(args.vocab, (6, 8, 8), args.max_len, **extra)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    batch = story_batch(args.batch, args.vocab, args.max_len)
    contestants = {"logits + cross_entropy": (logits_loss, False), "caption_loss (fused)": (fused_loss, False),
                   "logits + cross_entropy, bf16": (logits_loss, True), "caption_loss (fused), bf16": (fused_loss, True)}
    steps = {name: step_fn(model, optimizer, batch, loss, bf16) for name, (loss, bf16) in contestants.items()}
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["logits + cross_entropy"]
    print(f"story-model step ({args.decoder} decoder), {args.batch} windows x {args.max_len} tokens, vocab {args.vocab}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}:")
    for name, seconds in medians.items():
        print(f"  {name:30s} {seconds:6.2f} s  {base / seconds:4.2f}x")
    return medians


if __name__ == "__main__":
    main()
