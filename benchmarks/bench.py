"""`make bench`: the entry point of the `speed` package beside it (see benchmarks/speed/__init__.py).

    .venv/bin/python benchmarks/bench.py [--quick] [--frames 1500] [--rounds 3] [--out benchmarks/results.json]
"""

from __future__ import annotations

import os

# before tqdm and datasets are imported: no progress bars between the benchmark's lines
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from speed.cli import main  # noqa: E402  (benchmarks/, this script's folder, is first on sys.path)

if __name__ == "__main__":
    main()
