"""Greedy vs beam-search caption decoding at the StoryReasoning recipe's full-scale shapes, on random weights.

    .venv/bin/python benchmarks/bench_decoding.py [--batch 256] [--vocab 7465] [--max-len 120] [--beam 4]
                                                  [--steps 40] [--rounds 3] [--threads N]

Times `decode_captions` on one evaluation batch (eval_batch_size windows) of the recipe's story model
(conf/model/multimodal.yaml widths, the conv autoencoder's (6, 8, 8) latent), every step decoded: <eos> is
made impossible, so each run decodes exactly `--steps` steps as a caption that long would. Greedy and beam
rounds alternate; the medians are printed, with beam / greedy, the figure issue 22 bounds (<= 3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from storyreason.models.decoding import decode_captions
from storyreason.models.story import StoryModel

LATENT_SHAPE = (6, 8, 8)


def encoding(batch: int, vocab: int, max_len: int, context: int = 4):
    """A recipe-sized story model that never emits <eos>, and the encoding of a random context batch."""
    torch.manual_seed(0)
    model = StoryModel(vocab, LATENT_SHAPE, max_len).eval()
    with torch.no_grad():
        model.caption.head[-1].bias[EOS_ID] = -1e4
    latent_dim = LATENT_SHAPE[0] * LATENT_SHAPE[1] * LATENT_SHAPE[2]
    lengths = torch.randint(max_len // 2, max_len + 1, (batch, context))
    captions = torch.randint(4, vocab, (batch, context, max_len))
    captions[torch.arange(max_len) >= lengths[..., None]] = PAD_ID
    with torch.no_grad():
        return model, model.encode(torch.randn(batch, context, latent_dim), captions, lengths)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="windows per batch (the recipe's eval_batch_size)")
    parser.add_argument("--vocab", type=int, default=7465, help="vocabulary (the full-scale stand-in's)")
    parser.add_argument("--max-len", type=int, default=120, help="the model's caption length")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="decoding steps timed per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, enc = encoding(args.batch, args.vocab, args.max_len)
    times: dict[str, list[float]] = {"greedy": [], f"beam{args.beam}": []}
    for _ in range(args.rounds):
        for name, beam in (("greedy", 1), (f"beam{args.beam}", args.beam)):
            start = time.perf_counter()
            decode_captions(model, enc, beam_size=beam, max_len=args.steps)
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    result["ratio"] = result[f"beam{args.beam}"] / result["greedy"]
    print(f"{args.batch} windows, vocab {args.vocab}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"median of {args.rounds}: greedy {result['greedy']:.2f} s, beam {args.beam} "
          f"{result[f'beam{args.beam}']:.2f} s, beam / greedy {result['ratio']:.2f}")
    return result


if __name__ == "__main__":
    main()
