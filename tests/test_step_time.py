"""benchmarks/step_time.py: times the steps it says, of the config it is given, and leaves no run behind."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.commands import REPO, run_command
from tests.conftest import TINY, TINY_STORY


def test_it_times_the_steps_after_the_skipped_ones_of_the_given_config(ae_run: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in ae_run.iterdir())
    command = [sys.executable, str(REPO / "benchmarks" / "step_time.py"), f"paths.root={ae_run}", *TINY, *TINY_STORY,
               "data=prose", "data.max_caption_len=auto", "data.group_by_length=true"]
    done = run_command([*command, "--steps", "3", "--skip", "1"])  # the tiny train split is 3 batches
    assert done.returncode == 0, done.stderr[-2000:]
    line = re.search(r"threads, (.*): steps 1-2: mean ([0-9.]+) s a step, median [0-9.]+ s, mean caption width "
                     r"([0-9.]+)", done.stdout)
    assert line, done.stdout[-2000:]
    assert "data.group_by_length=true" in line[1] and float(line[2]) > 0 and float(line[3]) > 24
    assert "┏" not in done.stdout and "Epoch 0" not in done.stdout + done.stderr  # no empty table, no training bar
    assert sorted(p.name for p in ae_run.iterdir()) == before  # the cache was there; no run directory added
    longer = run_command([*command, "--steps", "5", "--skip", "1"])
    assert longer.returncode != 0 and "the first epoch has only 3 steps" in longer.stderr
