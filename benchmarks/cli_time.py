"""`make bench-cli`: the wall time of the commands a user types before any training starts.

    .venv/bin/python benchmarks/cli_time.py [--repeats 5]

Times `train.py --help`, `train.py --cfg job` and one tab-completion query (what the shell runs on
<TAB> after `eval "$(python train.py -sc install=bash)"`), each as a fresh process, and prints the
median, min and max of each beside the CPU it ran on and the load average (another job on the
machine slows every figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from speed.hardware import cpuinfo  # benchmarks/, this script's folder, is first on sys.path

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["python", "train.py"]
COMMANDS = {
    "train.py --help": ([*TRAIN, "--help"], {}),
    "train.py --cfg job": ([*TRAIN, "--cfg", "job"], {}),
    "completion of `train.py stage=`": ([*TRAIN, "-sc", "query=bash"], {"COMP_LINE": "python train.py stage="}),
}


def wall_times(argv: list[str], env: dict[str, str], repeats: int) -> list[float]:
    """Seconds each of `repeats` runs of `argv` (python replaced by this interpreter) took, from the repo root."""
    argv = [sys.executable, *argv[1:]]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (the median is the figure)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpuinfo('model name') or 'unknown CPU'}, {cores} cores; load average {os.getloadavg()[0]:.2f} at start")
    for name, (argv, env) in COMMANDS.items():
        times = wall_times(argv, env, args.repeats)
        print(f"{name:<34} median {statistics.median(times):5.2f} s   min {min(times):5.2f}   max {max(times):5.2f}"
              f"   ({args.repeats} runs)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
