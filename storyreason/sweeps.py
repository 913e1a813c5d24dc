"""Sweeps (`python train.py -m ...`): each job's outcome in its directory, and a summary of the sweep.

Under Hydra's multirun a job that raises would end the whole sweep, so `record_job` catches the
error, writes it to the job's directory (job.json and error.txt) and returns NaN: the other jobs
still run, and an Optuna search counts the trial as failed. When the sweep ends, the `SweepSummary`
Hydra callback (conf/hydra/default.yaml) writes sweep_summary.csv and sweep_summary.md into the
sweep directory: one row per job with its overrides, status, error and final metrics, best first.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from storyreason.distributed import sweep_job_as_single_run
from storyreason.errors import ConfigError, StoryreasonError, user_error
from storyreason.report import markdown_table, write_json_atomic
from storyreason.rundir import RunDir

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
_ABSENT = object()
ERROR_FILE = "error.txt"
# test-split metrics of the model shown in sweep_summary.md when a job has them (the CSV has all)
HEADLINE = ("test/l1", "test/psnr", "test/ssim", "test/image_l1", "test/image_ssim",
            "test/perplexity", "test/gen_token_acc", "test/bleu", "test/rougeL")


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def current_sweep_dir() -> Path | None:
    """The directory of the sweep this process runs a job of, else None."""
    return Path(HydraConfig.get().sweep.dir) if in_sweep() else None


def record_job(task: Callable[[DictConfig], float | None], cfg: DictConfig) -> float | None:
    """`task(cfg)`; inside a sweep its outcome is written to the job's directory, and an error is
    recorded there and turned into a NaN result instead of ending the sweep. Outside a sweep the
    error propagates, so a single run still exits non-zero."""
    if not in_sweep():
        return task(cfg)
    out = Path(cfg.paths.output_dir)
    write = rank_zero_only.rank == 0
    try:
        with sweep_job_as_single_run(out):
            value = task(cfg)
    except Exception as err:
        ours = user_error(err)
        message = f"{type(ours or err).__name__}: {ours or err}"
        # our errors in one line; anything else is a bug, logged with its traceback
        log.error("job failed, the sweep goes on: %s", message, exc_info=ours is None)
        if write:
            (out / ERROR_FILE).write_text(traceback.format_exc())
            write_json_atomic(out / JOB_FILE, {"status": "failed", "error": message})
        return float("nan")
    if write:
        write_json_atomic(out / JOB_FILE, {"status": "done", "value": value})
    return value


def _mode(job: RunDir, config: DictConfig) -> str:
    """`max` or `min`: the sweeper's direction where it has one (Optuna), else the stage's."""
    hydra = OmegaConf.load(job.hydra_config) if job.hydra_config.is_file() else OmegaConf.create()
    direction = OmegaConf.select(hydra, "hydra.sweeper.direction", default=None)
    if isinstance(direction, str) and direction in ("minimize", "maximize"):
        return direction[:3]
    return OmegaConf.select(config, "stage.mode", default="min")


def _job_row(job_dir: Path) -> dict[str, Any]:
    """One job's name, status, overrides, optimized metric (name, value, mode), error and metrics."""
    job = RunDir(job_dir)
    overrides = list(OmegaConf.load(job.overrides)) if job.overrides.is_file() else []
    config = OmegaConf.load(job.config) if job.config.is_file() else OmegaConf.create()
    metric = OmegaConf.select(config, "optimized_metric", default=None)
    outcome = json.loads((job_dir / JOB_FILE).read_text()) if (job_dir / JOB_FILE).is_file() else {}
    metrics = json.loads(job.metrics.read_text()) if job.finished else {}
    hydra = OmegaConf.load(job.hydra_config) if job.hydra_config.is_file() else OmegaConf.create()
    searched = OmegaConf.select(hydra, "hydra.sweeper.params", default=None) or {}
    return {
        "job": job_dir.name,
        "status": outcome.get("status", "done" if metrics else "unfinished"),
        "overrides": overrides,
        "params": dict(_key_value(o) for o in overrides),
        "searched": [str(k) for k in searched],
        "metric": metric,
        "value": metrics.get(metric) if metric else None,
        "mode": _mode(job, config),
        "error": outcome.get("error", ""),
        "metrics": metrics,
    }


def _key_value(override: str) -> tuple[str, str]:
    """`model.lr=0.001` as ("model.lr", "0.001"); an override without a value (`~key`) is its own key."""
    key, sep, value = override.partition("=")
    return (key, value) if sep else (override, "")


def parameter_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The parameters a summary shows as columns: every key the sweeper searched (all of Optuna's search
    space, even one that happened to take one value in every trial), then every key whose value the jobs vary."""
    columns = dict.fromkeys(k for r in rows for k in r["searched"])
    for row in rows:
        for key in row["params"]:
            if len({r["params"].get(key) for r in rows}) > 1:
                columns.setdefault(key)
    return list(columns)


def _sort_key(row: dict[str, Any]) -> tuple[int, float, str]:
    """Done jobs with a finite metric first, best first; then the others in job order."""
    value = row["value"]
    if row["status"] != "done" or value is None or not math.isfinite(value):
        return (1, 0.0, row["job"].zfill(8))
    return (0, -value if row["mode"] == "max" else value, row["job"].zfill(8))


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """A row per job directory of the sweep (one holding .hydra/), best first.

    `overrides` is reduced to the overrides that differ between the jobs, so the row shows what
    the sweep varied; with a single job it keeps them all.
    """
    jobs = sorted((d for d in Path(sweep_dir).iterdir() if RunDir(d).hydra.is_dir()), key=lambda d: d.name.zfill(8))
    rows = [_job_row(d) for d in jobs]
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared)
    return sorted(rows, key=_sort_key)


SIGNIFICANT = 3  # digits of the floats in sweep_summary.md and on the console; the CSV keeps them all
BEST_ROWS = 5  # rows of the summary printed when a sweep ends


def _cell(value: Any) -> str:
    """A float (or an override's value that reads as one) to SIGNIFICANT digits; anything else as it is."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value or "-"
        if value.strip().lower() in ("nan", "inf", "-inf", "infinity") or number.is_integer() and "." not in value \
                and "e" not in value.lower():
            return value  # integers (a width of 256) stay whole
        value = number
    return f"{value:.{SIGNIFICANT}g}" if isinstance(value, float) else str(value)


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write sweep_summary.csv (every override and metric, unrounded) and sweep_summary.md (a column per
    searched or varied parameter and the headline metrics, floats to SIGNIFICANT digits) into `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    rows = summarize(sweep_dir)
    metric = next((r["metric"] for r in rows if r["metric"]), "optimized_metric")
    keys = sorted({k for r in rows for k in r["metrics"]}, key=lambda k: (k != metric, k))
    params = parameter_columns(rows)
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "job", "status", "overrides", "error", "optimized_metric", *params, *keys])
        for rank, r in enumerate(rows, 1):
            writer.writerow([rank, r["job"], r["status"], r["overrides"], r["error"], r["metric"],
                             *(r["params"].get(k, "") for k in params), *(r["metrics"].get(k) for k in keys)])
    header, table = _markdown_rows(rows, metric, params)
    mode = next((r["mode"] for r in rows if r["metric"]), "min")
    failed = sum(r["status"] != "done" for r in rows)
    text = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(rows)} jobs, {len(rows) - failed} done, {failed} failed or unfinished; "
        f"sorted by {metric} ({'higher' if mode == 'max' else 'lower'} is better).",
        "",
        markdown_table(header, table, numbers=False),
    ]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(text) + "\n")
    return rows


def _markdown_rows(rows: list[dict[str, Any]], metric: str, params: list[str]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of sweep_summary.md: rank, job, status, the parameters, the optimized metric,
    the headline test metrics the jobs have, and the error."""
    headline = [k for k in HEADLINE if k != metric and any(k in r["metrics"] for r in rows)]
    shown = set(params)
    others = [" ".join(o for o in r["overrides"].split() if _key_value(o)[0] not in shown) for r in rows]
    extra = ["overrides"] if any(others) else []  # varied overrides that are not key=value parameters
    table = [
        [str(rank), r["job"], r["status"], *(_cell(r["params"].get(k, "")) for k in params), *([o or "-"] if extra else []),
         _cell(r["value"]) if r["value"] is not None else "-",
         *(_cell(r["metrics"][k]) if k in r["metrics"] else "-" for k in headline), r["error"][:200] or "-"]
        for rank, (r, o) in enumerate(zip(rows, others), 1)
    ]
    return ["rank", "job", "status", *params, *extra, metric, *headline, "error"], table


def print_best(sweep_dir: str | Path, rows: list[dict[str, Any]], count: int = BEST_ROWS) -> None:
    """Print the best `count` rows of the summary to stdout (the whole table is in sweep_summary.md)."""
    if not rows:
        return
    metric = next((r["metric"] for r in rows if r["metric"]), "optimized_metric")
    header, table = _markdown_rows(rows[:count], metric, parameter_columns(rows))
    shown = f"the best {count} of {len(rows)} jobs" if len(rows) > count else f"all {len(rows)} jobs"
    print(f"Sweep {sweep_dir}: {shown}, by {metric}\n\n{markdown_table(header, table, numbers=False)}\n", flush=True)


def check_search_space(config: DictConfig) -> None:
    """Raise ConfigError when the sweeper searches a key the chosen stage's config lacks (a stage-2
    search space with stage=pretrain_ae), instead of Hydra's "Key 'story' is not in struct"."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    stage = OmegaConf.select(config, "stage.name", default="?")
    for key in params:
        if not key.startswith("+") and OmegaConf.select(config, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            choice = OmegaConf.select(config, "hydra.runtime.choices.hparams_search", default=None)
            raise ConfigError(
                f"hparams_search={choice}: {key} is not a key of stage={stage}; this search space is for another "
                f"stage (stage 2: hparams_search=optuna, stage 1: hparams_search=optuna_ae)"
            )


def choose_autoencoder_once(config: DictConfig) -> None:
    """A stage-2 sweep with `model.ae_ckpt=auto` resolves it here, once, into the sweep directory, where its
    jobs read it: a stage-1 run finishing mid-sweep cannot give later jobs another autoencoder. When
    nothing is found, each job reports that itself."""
    if OmegaConf.select(config, "stage.name") != "multimodal" or \
            OmegaConf.select(config, "model.ae_ckpt", default=None) not in (None, "", "auto"):
        return
    from storyreason.checkpoints import SWEEP_AE_CHOICE, resolve_ae_checkpoint  # torch: only for stage-2 sweeps

    try:
        chosen = resolve_ae_checkpoint("auto", config.paths.root)
    except StoryreasonError:
        return
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_AE_CHOICE).write_text(f"{chosen.resolve()}\n")


class SweepSummary(Callback):
    """Hydra callback: checks the search space when a multirun starts, the sweep summary when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_search_space(config)
        except ConfigError as err:
            print(f"ConfigError: {err}", file=sys.stderr)
            sys.exit(2)
        choose_autoencoder_once(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        print_best(sweep_dir, rows)
        failed = [r["job"] for r in rows if r["status"] != "done"]
        log.info("sweep summary: %s", sweep_dir / "sweep_summary.md")
        if failed:
            log.warning("%d of %d jobs failed or did not finish (jobs %s): see %s",
                        len(failed), len(rows), ", ".join(failed), sweep_dir / "sweep_summary.md")
