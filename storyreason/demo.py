"""`make demo`: train stage 1 then stage 2 on the built-in world and print the model-vs-baselines table.

Each stage runs as the user would run it (`python train.py stage=...`), so the demo exercises the
documented commands. Extra arguments are passed to both stages as Hydra overrides.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from storyreason.checkpoints import find_latest_run
from storyreason.report import print_table

REPO = Path(__file__).resolve().parents[1]


def _stage(stage: str, overrides: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train.py"), f"stage={stage}", *overrides], check=True, cwd=REPO)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    root = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("paths.root=")), "outputs"))
    root = root if root.is_absolute() else REPO / root
    wall = {"pretrain_ae": _stage("pretrain_ae", argv)}
    ae_run = find_latest_run(root, "pretrain_ae")
    wall["multimodal"] = _stage("multimodal", [*argv, f"model.ae_ckpt={ae_run}"])
    run = find_latest_run(root, "multimodal")
    ae_metrics = json.loads((ae_run / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    print()
    print_table(ae_metrics, "test", title="stage 1 autoencoder, test split")
    print_table(metrics, "test", title="stage 2 model vs baselines, test split")
    print(f"wall time: stage 1 {wall['pretrain_ae']:.0f} s, stage 2 {wall['multimodal']:.0f} s, "
          f"total {sum(wall.values()):.0f} s")
    print(f"stage 1 run: {ae_run.relative_to(REPO) if ae_run.is_relative_to(REPO) else ae_run}")
    print(f"stage 2 run: {run.relative_to(REPO) if run.is_relative_to(REPO) else run}  "
          "(metrics.json, checkpoints/, samples/, tensorboard/)")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {root.relative_to(REPO) if root.is_relative_to(REPO) else root}")


if __name__ == "__main__":
    main(sys.argv[1:])
