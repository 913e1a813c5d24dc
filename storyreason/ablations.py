"""`make ablations`: ours, the seed's model, and ours minus each of our changes, over several seeds.

Two Hydra multiruns of train.py, run in this interpreter as `make demo` runs its stages:
  stage 1  one autoencoder per seed for each row that needs its own (ours, fc_bottleneck, seed_model)
  stage 2  every row x every seed, each over the stage-1 run its row names (`ablation.stage1`)
A row is an option of the `ablation` config group (conf/ablation/<row>.yaml). The sweep then writes
docs/ablations.md: per row the mean ± std over seeds of the test metrics, beside the baselines (and the
world's oracles where the metrics have them), with the budget, the command and the machine.

    python -m storyreason.ablations [--rows a,b] [--seeds 0,1,2] [--out FILE] [OVERRIDE ...]
    python -m storyreason.ablations --summarize <sweep dir> [--out FILE]

An override goes to both stages; `pretrain_ae:KEY=VALUE` or `multimodal:KEY=VALUE` to one of them
(e.g. `trainer=gpu multimodal:trainer.max_epochs=8`). They come after the CPU budget below, so they win.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from storyreason.demo import REPO, cpu_name, run_stage
from storyreason.report import PREDICTORS, markdown_table, skills, write_text_atomic
from storyreason.sweeps import JOB_FILE

CONF = REPO / "conf" / "ablation"
ROWS = ("ours", "seed_model", "fc_bottleneck", "mlp_head", "no_caption_memory", "no_story_batches")
SEEDS = (0, 1, 2)
STAGES = ("pretrain_ae", "multimodal")
RUN_FILE = "ablations.json"  # in the sweep directory: the command, the machine, the whole command's wall seconds
# sized so the whole command takes ~40 min on a 2-core CPU shared with other jobs (docs/ablations.md):
# a smaller world and one short epoch per stage, the same for every row (the seed's 10 epochs included)
BUDGET = {
    "both": ["data.source.num_stories={train:1000,val:100,test:100}", "trainer.max_epochs=1",
             "callbacks.progress_bar.refresh_rate=0"],
    "pretrain_ae": ["trainer.limit_train_batches=80"],
    "multimodal": ["trainer.limit_train_batches=60"],
}
# (label, key): a test metric after `test/`, a skill of report.SKILLS, or the job's wall seconds
COLUMNS = (
    ("image L1 ↓", "image_l1"),
    ("image skill ↑", "image skill vs ae_ceiling"),
    ("image skill vs oracle ↑", "image skill vs oracle_frame"),
    ("token acc (free) ↑", "gen_token_acc"),
    ("caption skill vs oracle ↑", "caption skill vs oracle_caption"),
    ("token acc (forced) ↑", "token_acc"),
    ("BLEU-4 ↑", "bleu"),
    ("wall s", "wall"),
)
BASELINES = ("copy_last_frame", "mean_context", "copy_last_caption", "oracle_frame", "oracle_caption", "ae_ceiling")


def describe(row: str) -> str:
    """What a row changes: the comment that opens conf/ablation/<row>.yaml."""
    lines = (CONF / f"{row}.yaml").read_text().splitlines()
    comment = next(line for line in lines if line.startswith("# ") and "@package" not in line)
    return comment[2:].removeprefix("`make ablations` row: ")


def stage1_row(row: str) -> str:
    """The row whose stage-1 run `row` decodes with (`ablation.stage1` of conf/ablation/<row>.yaml)."""
    return OmegaConf.load(CONF / f"{row}.yaml").ablation.stage1


def split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """`KEY=VALUE` for both stages, `<stage>:KEY=VALUE` for one, after the budget's own."""
    per_stage = {stage: [*BUDGET["both"], *BUDGET[stage]] for stage in STAGES}
    for override in overrides:
        stage, sep, rest = override.partition(":")
        if sep and stage in STAGES:
            per_stage[stage].append(rest)
        else:
            for stage in STAGES:
                per_stage[stage].append(override)
    return per_stage


def run_sweeps(sweep_dir: Path, rows: list[str], seeds: list[int], overrides: list[str]) -> None:
    """Stage 1 for the rows that own an autoencoder, then stage 2 for every row."""
    per_stage = split_overrides(overrides)
    seeds_arg = f"seed={','.join(map(str, seeds))}"
    owners = sorted({stage1_row(r) for r in rows}, key=ROWS.index)
    ae_dir = sweep_dir / "pretrain_ae"
    run_stage("pretrain_ae", [
        "hydra.mode=MULTIRUN", f"ablation={','.join(owners)}", seeds_arg, f"hydra.sweep.dir={ae_dir}",
        "hydra.sweep.subdir=${ablation.row}-seed${seed}", *per_stage["pretrain_ae"]])
    run_stage("multimodal", [
        "hydra.mode=MULTIRUN", f"ablation={','.join(rows)}", seeds_arg, f"hydra.sweep.dir={sweep_dir / 'multimodal'}",
        "hydra.sweep.subdir=${ablation.row}-seed${seed}", f"model.ae_ckpt={ae_dir}/${{ablation.stage1}}-seed${{seed}}",
        *per_stage["multimodal"]])


def job_wall(job: Path) -> float:
    """A job's wall seconds: from Hydra writing its config to train.py writing its metrics.json."""
    return (job / "metrics.json").stat().st_mtime - (job / ".hydra" / "config.yaml").stat().st_mtime


def collect(stage_dir: Path) -> dict[str, list[dict[str, float]]]:
    """row -> its finished jobs' test metrics (keys without `test/`), skills and wall seconds, in seed
    order; failed jobs are left out."""
    runs: dict[str, list[dict[str, float]]] = {}
    for job in sorted(stage_dir.glob("*-seed*"), key=lambda j: j.name):
        outcome = json.loads((job / JOB_FILE).read_text()) if (job / JOB_FILE).is_file() else {}
        if outcome.get("status") != "done" or not (job / "metrics.json").is_file():
            continue
        metrics = json.loads((job / "metrics.json").read_text())
        found = {k[len("test/"):]: v for k, v in metrics.items() if k.startswith("test/")}
        values = {label: skill.value for label, skill in skills(metrics).items()}  # NaN where n/a
        runs.setdefault(job.name.rsplit("-seed", 1)[0], []).append({**found, **values, "wall": job_wall(job)})
    return runs


def failures(sweep_dir: Path) -> list[str]:
    """'stage/job: error' for every job of the sweep that did not finish."""
    failed = []
    for job in sorted(sweep_dir.glob("*/*-seed*")):
        outcome = json.loads((job / JOB_FILE).read_text()) if (job / JOB_FILE).is_file() else {}
        if outcome.get("status") != "done":
            failed.append(f"{job.parent.name}/{job.name}: {outcome.get('error', 'unfinished')}")
    return failed


def column(runs: list[dict[str, float]], key: str) -> str:
    """'0.1234 ± 0.0012': mean ± sample std of `key` over the runs that have it ('± -' for one run, '-' for
    none, 'n/a' for a skill no run reports: its ceiling was no better than the copy); wall seconds without decimals."""
    values = [r[key] for r in runs if key in r and math.isfinite(r[key])]
    if not values:
        return "n/a" if any(key in r for r in runs) else "-"
    digits = 0 if key == "wall" else 4
    spread = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "-"
    return f"{statistics.fmean(values):.{digits}f} ± {spread}"


def story_table(runs: dict[str, list[dict[str, float]]]) -> str:
    """Rows in ROWS order, then each baseline's values from the `ours` runs (their data and autoencoder);
    columns no run has are left out."""
    reference = runs.get("ours") or next(iter(runs.values()), [])
    body = [[row, str(len(runs[row])), *(column(runs[row], key) for _, key in COLUMNS)] for row in ROWS if row in runs]
    for name in BASELINES:
        cells = [column(reference, PREDICTORS[name] + key) for _, key in COLUMNS]
        if any(c != "-" for c in cells):
            body.append([f"*{name}*", str(len(reference)), *cells])
    kept = [i for i in range(len(COLUMNS)) if any(row[2 + i] != "-" for row in body)]
    header = ["row", "seeds", *(COLUMNS[i][0] for i in kept)]
    return markdown_table(header, [row[:2] + [row[2 + i] for i in kept] for row in body])


def ae_table(runs: dict[str, list[dict[str, float]]]) -> str:
    header = ["stage-1 run", "seeds", "test L1 ↓", "test PSNR ↑", "wall s"]
    body = [[row, str(len(runs[row])), column(runs[row], "l1"), column(runs[row], "psnr"), column(runs[row], "wall")]
            for row in ROWS if row in runs]
    return markdown_table(header, body)


def stage_budget(cfg: DictConfig) -> str:
    """'1 epoch(s) of 150 train batches (max_steps -1), batch 64' from a job's saved config."""
    t = cfg.trainer
    return f"{t.max_epochs} epoch(s) of {t.limit_train_batches} train batches (max_steps {t.max_steps}), batch {cfg.data.batch_size}"


def budget_line(sweep_dir: Path) -> str:
    """Both stages' budgets and the split sizes, read from the first job of each sweep."""
    jobs = [next((sweep_dir / stage).glob("*-seed*"), None) for stage in STAGES]
    if None in jobs:
        return "unknown (a stage has no job directory)"
    ae, story = (OmegaConf.load(job / ".hydra" / "config.yaml") for job in jobs)
    stories = OmegaConf.select(story, "data.source.num_stories", default=None)
    return (f"stage 1: {stage_budget(ae)}; stage 2: {stage_budget(story)}; stories per split "
            f"{OmegaConf.to_container(stories) if stories is not None else 'as the data source has them'}")


def write_report(sweep_dir: Path, out: Path) -> str:
    """docs/ablations.md (or `out`) from the finished jobs of `sweep_dir` and the command it saved."""
    story, ae = collect(sweep_dir / "multimodal"), collect(sweep_dir / "pretrain_ae")
    run = json.loads((sweep_dir / RUN_FILE).read_text()) if (sweep_dir / RUN_FILE).is_file() else {}
    total = f" The whole command took {run['wall'] / 60:.1f} min." if "wall" in run else ""
    text = "\n".join([
        "# Ablations: ours, the seed's model, ours minus each change",
        "",
        f"Written by `{run.get('command', 'make ablations')}` from its sweep {sweep_dir.name}, on "
        f"{run.get('machine', cpu_name())}, at nice 19 beside other jobs: read wall times against that.{total}",
        "",
        f"Budget, the same for every row: {budget_line(sweep_dir)}.",
        "",
        "Test split; mean ± sample std over seeds. Image skill = (copy_last_frame − model) / (copy_last_frame − "
        "ae_ceiling), each run against its own autoencoder; the skills vs oracle put oracle_frame (image L1) or "
        "oracle_caption (free token accuracy) in place of the ceiling. Wall: one stage-2 job, fit and final "
        "evaluation. Rows in *italics* are baselines, scored on the `ours` runs' data and autoencoder. A skill "
        "swings wildly when its ceiling is barely better than the copy (an autoencoder whose L1 is near "
        "copy_last_frame's): read those rows' image L1 instead; it is n/a where the ceiling is no better "
        "than the copy at all.",
        "",
        story_table(story),
        "",
        *(f"- `{row}`: {describe(row)}" for row in ROWS if row in story),
        "",
        "What `seed_model` still does differently from the seed: conf/experiment/seed.yaml lists it.",
        "",
        "Stage-1 autoencoders (rows not listed decode with `ours`'s):",
        "",
        ae_table(ae),
        "",
        *(["Jobs that did not finish (left out of the means):", "", *(f"- {f}" for f in failures(sweep_dir)), ""]
          if failures(sweep_dir) else []),
    ])
    write_text_atomic(out, text)
    return text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m storyreason.ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated options of conf/ablation/")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--summarize", type=Path, help="only write the report from this finished sweep directory")
    args, overrides = parser.parse_known_args(argv)
    if args.summarize:
        print(write_report(args.summarize, args.out))
        return
    started = time.perf_counter()
    os.chdir(REPO)  # train.py resolves relative paths from the repository root
    root = Path(next((o.split("=", 1)[1] for o in overrides if o.startswith("paths.root=")), "outputs"))
    sweep_dir = (root if root.is_absolute() else REPO / root) / "ablations" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_sweeps(sweep_dir, args.rows.split(","), [int(s) for s in args.seeds.split(",")], overrides)
    command = "make ablations" + (f" ARGS='{' '.join(argv)}'" if argv else "")
    run = {"command": command, "machine": cpu_name(), "wall": time.perf_counter() - started}
    (sweep_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    print(write_report(sweep_dir, args.out))
    print(f"sweep: {sweep_dir}; table: {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
