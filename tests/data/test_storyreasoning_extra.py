"""`datasets` and pyarrow are the `storyreasoning` extra, outside the core install: without them the other
sources still work, and data=storyreasoning stops with one line naming the install command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.commands import output, run_command
from tests.conftest import TINY
from tests.data.conftest import write_snapshot

# train.py as a core install runs it: importing datasets, pyarrow or pandas fails
WITHOUT_EXTRA = """
import runpy, sys
for name in ("datasets", "pyarrow", "pandas"):
    sys.modules[name] = None
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def core_train_py(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    sizes = [o for o in TINY if not o.startswith("data.source.")]  # the built-in world's own keys
    return run_command([sys.executable, "-c", WITHOUT_EXTRA, "stage=pretrain_ae", f"paths.root={root}", *sizes,
                        *overrides])


def test_storyreasoning_without_its_extra_names_the_install_command(tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot")
    result = core_train_py(tmp_path / "runs", "data=storyreasoning", f"data.path={snapshot}")
    assert result.returncode == 2, output(result)[-3000:]
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].endswith(
        "ConfigError: data=storyreasoning needs datasets and pyarrow, which the core install leaves out: "
        "pip install -e '.[storyreasoning]'"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "pretrain_ae").exists()  # nothing left behind


def test_the_built_in_world_trains_without_the_extra(tmp_path: Path) -> None:
    result = core_train_py(tmp_path, "data.source.num_stories={train:8,val:2,test:2}", "trainer.limit_train_batches=1")
    assert result.returncode == 0, output(result)[-3000:]
    assert list(tmp_path.glob("pretrain_ae/*/metrics.json"))
