"""benchmarks/bench_real.py's results name no absolute path of the machine they ran on, and name its CPU."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_real  # noqa: E402


def test_results_hold_paths_relative_to_the_repository() -> None:
    repo, workdir = bench_real.REPO, bench_real.REPO.parent / "_data"
    results = {
        "command": f"{sys.executable} train.py data.path={workdir}/standin/a paths.root={repo}/benchmarks/_data/runs",
        "steps": [{"log": f"{workdir}/runs/stage2.log", "run_dir": str(workdir)}],
        "frames": 3,
        "name": f"{repo}ology",  # a longer name that only starts with the repository's path is left alone
    }
    portable = bench_real.portable(results, workdir)
    assert portable["command"] == ("python train.py data.path=../_data/standin/a "
                                   "paths.root=benchmarks/_data/runs")
    assert portable["steps"] == [{"log": "../_data/runs/stage2.log", "run_dir": "../_data"}]
    assert portable["frames"] == 3 and portable["name"] == f"{repo}ology"


def test_the_machine_is_named_with_its_cpu_and_bf16_support() -> None:
    info = bench_real.machine(gpu=False, load_at_start=1.0)
    assert info["cpu"] and info["cores"] >= 1 and isinstance(info["cpu_bf16"], bool)
    assert info["load_average_at_start"] == 1.0 and info["load_average_at_end"] >= 0
