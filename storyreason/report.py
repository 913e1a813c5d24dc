"""Model-vs-baselines tables from a flat metrics dict (as written to metrics.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

PREDICTORS = {
    "model": "",
    "copy_last_frame": "baseline/copy_last_frame/",
    "mean_context": "baseline/mean_context/",
    "copy_last_caption": "baseline/copy_last_caption/",
    "ae_ceiling": "ae_ceiling/",
}
COLUMNS = ("image_l1", "image_psnr", "image_ssim", "token_acc", "gen_token_acc", "bleu")
AE_COLUMNS = ("l1", "psnr", "ssim")


def results_table(metrics: dict[str, float], split: str = "test") -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per predictor that has any metric on `split`, '-' where none applies."""
    if f"{split}/l1" in metrics:  # stage 1
        return ["", *AE_COLUMNS], [["autoencoder", *(f"{metrics[f'{split}/{c}']:.4f}" for c in AE_COLUMNS)]]
    rows = []
    for name, infix in PREDICTORS.items():
        cells = [metrics.get(f"{split}/{infix}{c}") for c in COLUMNS]
        if any(v is not None for v in cells):
            rows.append([name, *("-" if v is None else f"{v:.4f}" for v in cells)])
    return ["", *COLUMNS], rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def print_table(metrics: dict[str, float], split: str = "test", title: str = "") -> None:
    """Print the table with rich."""
    from rich.console import Console
    from rich.table import Table

    header, rows = results_table(metrics, split)
    table = Table(title=title or f"{split} split")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON through a temp file and a rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
