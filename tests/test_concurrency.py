"""Two runs on the same data at the same moment share the cache and keep separate run dirs; what each
prints goes where the README says: logs on stderr and in train.log, the result table on stdout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.commands import ENV, REPO
from tests.conftest import TINY

# train.py whose data source, once inside the cache build, waits until the other run is inside it too:
# both build the same entry at once, whatever the scheduling, and the rename race is always run.
BOTH_BUILDING = """
import os, runpy, sys, time
from pathlib import Path
from storyreason.data.sources.synthetic import SyntheticWorld

barrier = Path(sys.argv[1])
load = SyntheticWorld.load

def load_when_both_build(self):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(barrier.iterdir())) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other run never started building the cache")
        time.sleep(0.05)
    return load(self)

SyntheticWorld.load = load_when_both_build
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
LOG_LINE = re.compile(r"^\[[^]]+\]\[[\w.]+\]\[(INFO|WARNING|ERROR)\] - ", re.MULTILINE)


def test_two_simultaneous_runs_share_the_cache_and_write_separate_run_dirs(tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cmd = [sys.executable, "-c", BOTH_BUILDING, str(barrier), str(REPO / "train.py"), "stage=pretrain_ae",
           f"paths.root={tmp_path}", *TINY]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    assert len(list(barrier.iterdir())) == 2, "a run did not build the cache"
    runs = sorted((tmp_path / "pretrain_ae").iterdir())
    assert len(runs) == 2
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0] == metrics[1]  # same seed, same data: the shared cache served both
    entries = list((tmp_path / "cache").iterdir())
    assert [e.name.split("-")[0] for e in entries] == ["synthetic"], entries  # one entry, no temp folder left

    for stdout, stderr in outputs:
        run = next(r for r in runs if f"metrics: {r / 'metrics.json'}" in stderr)
        assert not LOG_LINE.search(stdout), "a log line went to stdout"
        assert re.search(rf"\bL1\b.*{metrics[0]['test/l1']:.4f}", stdout), f"no result table on stdout: {stdout}"
        logged = [line for line in stderr.splitlines() if LOG_LINE.match(line)]
        assert logged and all(line in (run / "train.log").read_text() for line in logged), "train.log lacks stderr's logs"
