"""Running train.py as a user would, in a subprocess, with tiny sizes and everything under one root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY, TINY_STORY

REPO = Path(__file__).resolve().parents[1]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def train_py(root: Path, *overrides: str, stage: str = "pretrain_ae", tiny: bool = True,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py stage=... paths.root=<root> <tiny sizes> <overrides>` (`-m` among them for a sweep)."""
    sizes = ([*TINY, *TINY_STORY] if stage == "multimodal" else TINY) if tiny else []
    flags = [o for o in overrides if o.startswith("-")]  # -m goes before the overrides
    cmd = [sys.executable, str(REPO / "train.py"), *flags, f"stage={stage}", f"paths.root={root}", *sizes,
           *(o for o in overrides if not o.startswith("-"))]
    return run_command(cmd, timeout)


def run_command(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """A command run from the repository root, one intra-op thread per process."""
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def output(result: subprocess.CompletedProcess) -> str:
    """stdout and stderr of a finished command, for asserts and their messages."""
    return result.stdout + result.stderr


def metrics(run_dir: Path) -> dict[str, float]:
    """The metrics.json of a finished run or job directory."""
    return json.loads((run_dir / "metrics.json").read_text())
