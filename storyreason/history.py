"""The scalars a run logged during training, from whichever logger wrote them.

TensorBoard events (`<run>/tensorboard/`) are read when the run has them, else the CSV logger's
`<run>/csv/metrics.csv`; a run trained with `logger=null` has none. Each value carries its `order`
within the run (TensorBoard: wall time; CSV: row), so a reader can tell what fitting logged from
what the final evaluation logged afterwards.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scalar:
    step: int
    value: float
    order: float


def _tensorboard(events: Path) -> dict[str, list[Scalar]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [Scalar(e.step, e.value, e.wall_time) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def _csv(metrics: Path) -> dict[str, list[Scalar]]:
    scalars: dict[str, list[Scalar]] = {}
    with open(metrics, newline="") as f:
        for row_number, row in enumerate(csv.DictReader(f)):
            step = int(float(row.get("step") or 0))
            for tag, value in row.items():
                if tag not in ("step", "epoch") and value not in (None, "") and math.isfinite(float(value)):
                    scalars.setdefault(tag, []).append(Scalar(step, float(value), float(row_number)))
    return scalars


def read_scalars(tensorboard_dir: Path, csv_metrics: Path) -> dict[str, list[Scalar]]:
    """Every scalar tag a run logged: from `tensorboard_dir`'s events if any, else `csv_metrics`, else {}."""
    if tensorboard_dir.is_dir() and any(tensorboard_dir.rglob("events.out.tfevents.*")):
        return _tensorboard(tensorboard_dir)
    if csv_metrics.is_file():
        return _csv(csv_metrics)
    return {}
