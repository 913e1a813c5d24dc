"""Model-vs-baselines tables from a flat metrics dict (as written to metrics.json)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

PREDICTORS = {
    "model": "",
    "copy_last_frame": "baseline/copy_last_frame/",
    "mean_context": "baseline/mean_context/",
    "copy_last_caption": "baseline/copy_last_caption/",
    "ae_ceiling": "ae_ceiling/",
    "oracle_frame": "baseline/oracle_frame/",
    "oracle_caption": "baseline/oracle_caption/",
}
# metric key (after `split/` and the predictor's infix) -> (label, whether higher is better)
STORY_METRICS = {
    "image_l1": ("image L1", False),
    "image_mse": ("image MSE", False),
    "image_psnr": ("image PSNR", True),
    "image_ssim": ("image SSIM", True),
    "token_acc": ("token acc (forced)", True),
    "perplexity": ("perplexity (forced)", False),
    "gen_token_acc": ("token acc (free)", True),
    "bleu1": ("BLEU-1", True),
    "bleu2": ("BLEU-2", True),
    "bleu3": ("BLEU-3", True),
    "bleu": ("BLEU-4", True),
    "chrf": ("chrF", True),
    "rougeL": ("ROUGE-L", True),
}
# skill label -> (metric key, the predictor that scores 0, the ceiling that scores 1): the share of the gap
# between a copy of the last context item and the best achievable that the model closes
SKILLS = {
    "image skill vs ae_ceiling": ("image_l1", "copy_last_frame", "ae_ceiling"),
    "image skill vs oracle_frame": ("image_l1", "copy_last_frame", "oracle_frame"),
    "caption skill vs oracle_caption": ("gen_token_acc", "copy_last_caption", "oracle_caption"),
    "caption chrF skill vs oracle_caption": ("chrf", "copy_last_caption", "oracle_caption"),
}
AE_METRICS = {"l1": ("L1", False), "mse": ("MSE", False), "psnr": ("PSNR", True), "ssim": ("SSIM", True)}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class Skill(NamedTuple):
    """A skill's value, or NaN and the reason it is not reported."""

    value: float
    reason: str = ""

    def cell(self) -> str:
        return f"n/a ({self.reason})" if self.reason else _cell(self.value)


def skills(metrics: dict[str, float], split: str = "test") -> dict[str, Skill]:
    """Each skill of `SKILLS` whose figures `metrics` holds: (copy - model) / (copy - ceiling); 1 is the
    ceiling, 0 no better than copying the last context frame or caption. A ceiling no better than the copy
    makes the ratio meaningless (an untrained autoencoder's: a model far worse than copying then scores
    ~1), so such a skill is n/a with the two figures as its reason: the one place every table reads."""
    found = {}
    for label, (key, floor, ceiling) in SKILLS.items():
        names = [f"{split}/{key}", f"{split}/{PREDICTORS[floor]}{key}", f"{split}/{PREDICTORS[ceiling]}{key}"]
        if all(name in metrics for name in names):
            model, low, high = (metrics[name] for name in names)
            better = high > low if STORY_METRICS[key][1] else high < low
            if better:
                found[label] = Skill((low - model) / (low - high))
            else:
                found[label] = Skill(math.nan, f"{ceiling} {STORY_METRICS[key][0]} {high:.4f} is no better than "
                                               f"{floor}'s {low:.4f}")
    return found


def results_table(metrics: dict[str, float], split: str = "test") -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric (its label says whether higher or lower is better), one
    column per predictor that has any metric on `split`, '-' where a metric does not apply."""
    if f"{split}/l1" in metrics:  # stage 1
        rows = [[f"{label} {'↑' if up else '↓'}", _cell(metrics[f"{split}/{key}"])]
                for key, (label, up) in AE_METRICS.items() if f"{split}/{key}" in metrics]
        return ["metric", "autoencoder"], rows
    columns = {name: infix for name, infix in PREDICTORS.items()
               if any(f"{split}/{infix}{key}" in metrics for key in STORY_METRICS)}
    rows = []
    for key, (label, up) in STORY_METRICS.items():
        cells = [metrics.get(f"{split}/{infix}{key}") for infix in columns.values()]
        if any(v is not None for v in cells):
            rows.append([f"{label} {'↑' if up else '↓'}", *map(_cell, cells)])
    for label, skill in skills(metrics, split).items():  # the model's alone
        rows.append([f"{label} ↑", skill.cell(), *("-" for _ in list(columns)[1:])])
    return ["metric", *columns], rows


def markdown_table(header: list[str], rows: list[list[str]], numbers: bool = True) -> str:
    """A GitHub-flavoured markdown table; with `numbers` every column after the first is right-aligned."""
    align = "---:" if numbers else "---"
    cells = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(cells[0]) + " |", "|---|" + "|".join(align for _ in header[1:]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def print_table(metrics: dict[str, float], split: str = "test", title: str = "") -> None:
    """Print the table with rich."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    header, rows = results_table(metrics, split)
    if not rows:  # nothing scored on the split (e.g. trainer.limit_test_batches=0): a line, not an empty box
        print(f"{title or f'{split} split'}: no {split} metrics")
        return
    # a title wider than the table (a run's path) stays on one line, where rich would wrap it to the table's width
    table = Table(title=Text(title or f"{split} split", no_wrap=True, overflow="ignore"))
    table.add_column(header[0], no_wrap=True)
    for h in header[1:]:  # predictor names wrap at their underscores in a narrow terminal
        table.add_column(h.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:  # a log file or pipe: no width to fit, so never cut a figure to "0.…"
        console.width = 240
    console.print(table)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through a temp file and a rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
