"""The command line of `make bench` (benchmarks/bench.py): flags in, the table and results JSON out."""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

from speed import __doc__ as DESCRIPTION
from speed.measure import run
from speed.report import closing_lines, table, write
from speed.workload import REPO


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with --quick's smaller defaults filled in."""
    parser = argparse.ArgumentParser(description=DESCRIPTION.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 120 frames, one round (< 1 min)")
    parser.add_argument("--frames", type=int, default=None, help="1280x720 JPEG frames to write (default 1500; quick 120)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each stage's contestants (default 3; quick 1)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the written frames")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed fit or bare loop (the seed style runs one)")
    parser.add_argument("--seed-batches", type=int, default=None,
                        help="seed-style batches timed per round, scaled to the epoch (default: the epoch shared out "
                             "over the rounds)")
    parser.add_argument("--gemm-size", type=int, default=None, help="(e): side of the square matmul (default 2048, GPU 8192)")
    parser.add_argument("--tile", type=int, default=1,
                        help="train on the train split this many times over per epoch (longer epochs for a GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="data.batch_size of both stages (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="trainer=cpu or trainer=gpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                        help="trainer.precision (default: the trainer config's)")
    parser.add_argument("--resident", action="store_true", help="GPU: keep the frames on the device (no copy per batch)")
    parser.add_argument("--bf16", choices=("auto", "skip", "force"), default="auto",
                        help="(f): auto = only where bf16 is native; force = run it even where it is emulated")
    parser.add_argument("--bf16-epochs", type=int, default=2, help="(f): epochs of stage-1 training per precision")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also fit stage 1 with model.compile=true, compiling first (default: on; quick: off)")
    parser.add_argument("--override", action="append", default=[], help="Hydra override for both stages (repeatable)")
    parser.add_argument("--story-override", action="append", default=[], help="Hydra override for stage 2 only")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_data", help="benchmark data and scratch")
    parser.add_argument("--demo-root", type=Path, default=REPO / "outputs", help="(h): where the demo's runs are")
    parser.add_argument("--demo-timing", type=Path, default=REPO / "docs" / "demo" / "timing.json",
                        help="(h): the wall times `make demo` writes, read first")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json", help="results JSON")
    args = parser.parse_args(argv)
    args.frames = args.frames or (120 if args.quick else 1500)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.gemm_size = args.gemm_size or (1024 if args.quick else None)
    args.compile = not args.quick if args.compile is None else args.compile
    if args.frames < 120:
        parser.error("--frames must be >= 120 (8 stories of 15 frames: at least one in each split)")
    return args


def quiet() -> None:
    """No Lightning banners or known warnings between the benchmark's own lines."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*self.log.*")


def main(argv: list[str] | None = None) -> dict:
    """Measure everything, write the JSON, print the table; returns the results."""
    args = parse_args(argv)
    quiet()
    start = time.perf_counter()
    results = run(args)
    results["bench_wall_s"] = time.perf_counter() - start
    write(results, args.out)
    print()
    print(table(results))
    print()
    print("\n".join(closing_lines(results, args.out)))
    return results
