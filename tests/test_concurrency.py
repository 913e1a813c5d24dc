"""Two runs started at the same moment on the same data share the cache and keep separate run dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def test_two_simultaneous_runs_share_the_cache_and_write_separate_run_dirs(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "train.py"), "stage=pretrain_ae", f"paths.root={tmp_path}", *TINY]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = sorted((tmp_path / "pretrain_ae").iterdir())
    assert len(runs) == 2
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0] == metrics[1]  # same seed, same data: the shared cache served both
    entries = list((tmp_path / "cache").iterdir())
    assert [e.name.split("-")[0] for e in entries] == ["synthetic"], entries  # one entry, no temp folder left
