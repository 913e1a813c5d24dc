"""`make bench-real`: the whole pipeline at full StoryReasoning scale, on a stand-in, run as a user runs it.

    .venv/bin/python benchmarks/bench_real.py [--train 3552] [--test 626] [--experiment storyreasoning] [--keep]
                                              [--override KEY=VALUE ...] [--out benchmarks/results_storyreasoning.json]

Steps, each a command of its own (output in <workdir>/runs/<step>.log):
  1. the stand-in (benchmarks/standin.py; written once under <workdir>/standin/ and reused);
  2. the frame cache of `data=storyreasoning data.path=<stand-in>`, built by `StoryDataModule.prepare_data`
     in a fresh cache folder (the HF Arrow copy included, as in a user's first run): frames per second;
  3. `python train.py experiment=<name> stage=pretrain_ae trainer.max_epochs=1`, one epoch;
  4. `python train.py experiment=<name> stage=multimodal trainer.max_epochs=1 model.ae_ckpt=<step 3's run>`;
  5. `python train.py stage=evaluate ckpt_path=<step 4's run> eval.split=test` (greedy), and 6. with
     `eval.beam_size=4`.
An epoch's seconds come from `EpochTimer`, a callback added to both training commands: from the epoch's
first batch to its end, the validation inside it included (also given apart); imports, the cache load and
the final evaluation of the best checkpoint are not in it. Every command's wall time and peak RSS (its own
and its children's, from wait4) are recorded too. Without `conf/experiment/<name>.yaml` the training
commands select `data=storyreasoning` instead. `--keep` reuses the steps a previous run finished.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
CONF = REPO / "conf"
TARGETS = {  # figure -> (comparison, bound)
    "cache_build_frames_per_s": (">=", 500.0),
    "stage2_epoch_s": ("<=", 360.0),
    "stage2_val_share": ("<=", 0.2),
    "evaluate_s": ("<=", 180.0),
    "evaluate_beam4_over_greedy": ("<=", 3.0),
    "peak_rss_mib": ("<=", 8192.0),
}
DATA_KEYS = {  # result key -> key of the stage-2 run's metrics.json
    "vocab_size": "data/vocab_size",
    "captions_truncated_share_train": "data/train_truncated_share",
    "test_oov_rate": "data/test_unk_rate",
    "max_caption_len": "data/max_caption_len",
}


class EpochTimer(Callback):
    """Writes `path` (JSON) at the end of every training epoch: its seconds, the validation's share of them,
    and the seconds of the whole fit so far."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.epochs: list[dict] = []
        self._fit_start = self._epoch_start = self._val_start = 0.0
        self._val_s = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start, self._val_s = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self._epoch_start:
            self._val_s += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        now = time.perf_counter()
        epoch_s = now - self._epoch_start
        self.epochs.append({
            "epoch": trainer.current_epoch,
            "epoch_s": epoch_s,
            "train_s": epoch_s - self._val_s,
            "val_s": self._val_s,
            "train_batches": trainer.num_training_batches,
            "val_batches": sum(trainer.num_val_batches) if trainer.num_val_batches else 0,
            "fit_s_so_far": now - self._fit_start,
        })
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"epochs": self.epochs}, indent=2) + "\n")


def build_frame_cache(result: str, overrides: list[str]) -> None:
    """(Child process of step 2.) Compose the config as train.py would, time `prepare_data`, write `result`."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(result).parent)
    datamodule = instantiate(cfg.data, _convert_="all")
    start = time.perf_counter()
    datamodule.prepare_data()
    Path(result).write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")


# ---- commands ------------------------------------------------------------------------------------------


def run_command(argv: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run `argv` from the repo root, stdout and stderr into `log`; its wall seconds and peak RSS (MiB, its
    own or its largest descendant's). Exits with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(argv)}  (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        sys.exit(f"{shlex.join(argv)}\nfailed with exit code {process.returncode} after {seconds:.0f} s; "
                 f"the end of {log}:\n{tail}")
    return {"command": shlex.join(argv), "wall_s": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "log": str(log)}


def child_env() -> dict[str, str]:
    """The environment of every command: benchmarks/ importable (EpochTimer, build_frame_cache)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCHMARKS), env.get("PYTHONPATH", "")) if p)
    return env


def selection(experiment: str | None) -> tuple[list[str], str]:
    """The overrides that pick the StoryReasoning setup, and a note saying which were used."""
    if experiment and (CONF / "experiment" / f"{experiment}.yaml").is_file():
        listed = re.search(r"^\s*-\s*experiment\s*:", (CONF / "config.yaml").read_text(), re.MULTILINE)
        override = f"{'' if listed else '+'}experiment={experiment}"
        return [override], override
    missing = f"conf/experiment/{experiment}.yaml does not exist" if experiment else "no --experiment"
    return ["data=storyreasoning"], f"data=storyreasoning ({missing})"


def epoch_timer(run: Path) -> list[str]:
    return ["+callbacks.epoch_timer._target_=bench_real.EpochTimer",
            f"+callbacks.epoch_timer.path={run / 'epoch_times.json'}"]


def first_epoch(run: Path) -> dict:
    """The first epoch's figures from a run's epoch_times.json."""
    return json.loads((run / "epoch_times.json").read_text())["epochs"][0]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def caption_metrics_seconds(log: Path) -> float | None:
    """Seconds of the caption metrics, where the evaluation logs a line `caption metrics ... N s`."""
    found = re.findall(r"caption metrics\b[^\n]*?(\d+(?:\.\d+)?)\s*s\b", log.read_text(errors="replace"), re.IGNORECASE)
    return float(found[-1]) if found else None


# ---- the benchmark -------------------------------------------------------------------------------------


def standin_data(workdir: Path, train: int, test: int, seed: int) -> tuple[Path, dict]:
    """The stand-in snapshot and its statistics, written once per size and seed."""
    from standin import write_standin

    folder = workdir / "standin" / f"train{train}-test{test}-seed{seed}"
    stats_file = folder.with_name(folder.name + ".json")
    if folder.is_dir() and stats_file.is_file():
        return folder, json.loads(stats_file.read_text())
    print(f"writing the stand-in ({train} train, {test} test stories) to {folder}", flush=True)
    stats = write_standin(folder, train, test, seed, overwrite=True)
    stats_file.write_text(json.dumps(stats, indent=2) + "\n")
    return folder, stats


class Steps:
    """Finished steps' results in <runs>/steps.json, reused by --keep while the setup is the same and no
    earlier step ran again."""

    def __init__(self, runs: Path, setup: dict, keep: bool, redo: tuple[str, ...] = ()) -> None:
        self.file = runs / "steps.json"
        saved = read_json(self.file) if keep else {}
        if saved.get("setup") != setup:
            if runs.exists():
                shutil.rmtree(runs)
            saved = {}
        runs.mkdir(parents=True, exist_ok=True)
        self.setup, self.done = setup, saved.get("steps", {})
        self.ran = False
        self.redo = set(redo)  # measured again whatever is saved; the steps after them keep theirs

    def run(self, step: str, outputs: list[Path], measure: Callable[[], dict]) -> dict:
        """The step's saved result if it finished and its `outputs` are still there, else `measure()`'s."""
        saved = self.done.get(step)
        if saved is not None and not self.ran and step not in self.redo and all(p.exists() for p in outputs):
            return saved
        self.ran = self.ran or step not in self.redo
        self.done[step] = measure()
        self.file.write_text(json.dumps({"setup": self.setup, "steps": self.done}, indent=2) + "\n")
        return self.done[step]


def run(args: argparse.Namespace) -> dict:
    """Every step; the results as written to JSON."""
    python = str(Path(sys.executable))
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    data, stats = standin_data(args.workdir, args.train, args.test, args.seed)
    runs = args.workdir / "runs"
    select, selected = selection(args.experiment)
    if not args.gpu:  # the recipe is a GPU's; here every command trains on the CPU
        select.append("trainer=cpu")
    common = [f"data.path={data}", f"paths.root={runs}", f"paths.cache={runs / 'cache'}",
              f"data.source.hf_cache_dir={runs / 'hf'}", *args.override]
    setup = {"data": str(data), "select": select, "common": common}
    steps = Steps(runs, setup, args.keep, tuple(args.redo))
    env = child_env()

    cache = steps.run("cache", [runs / "cache"], lambda: _cache_step(python, runs, [*select, *common], env))
    stage1_run, stage2_run = runs / "stage1", runs / "stage2"
    stage1 = steps.run("stage1", [stage1_run / "checkpoints" / "best.ckpt"], lambda: _train_step(
        python, stage1_run, ["stage=pretrain_ae", "trainer.max_epochs=1", *select, *common], env))
    stage2 = steps.run("stage2", [stage2_run / "checkpoints" / "best.ckpt"], lambda: _train_step(
        python, stage2_run, ["stage=multimodal", "trainer.max_epochs=1", f"model.ae_ckpt={stage1_run}", *select,
                             *common], env))
    evaluate_select = select if select[0].lstrip("+").startswith("experiment=") else ["data=storyreasoning"]
    evaluations = {}
    for step, beam in (("evaluate", 1), ("evaluate_beam4", 4)):
        overrides = [f"ckpt_path={stage2_run}", "eval.split=test", f"eval.beam_size={beam}", *evaluate_select, *common]
        evaluations[step] = steps.run(step, [runs / step / "metrics.json"],
                                      lambda: _evaluate_step(python, runs / step, overrides, env))
    metrics = read_json(stage2_run / "metrics.json")
    commands = {"cache": cache, "stage1": stage1, "stage2": stage2, **evaluations}
    results = {
        "frames": stats["frames"],
        "cache_build_frames_per_s": stats["frames"] / cache["build_s"],
        "cache_build_s": cache["build_s"],
        "stage1_epoch_s": stage1["epoch"]["epoch_s"],
        "stage2_epoch_s": stage2["epoch"]["epoch_s"],
        "evaluate_s": evaluations["evaluate"]["wall_s"],
        "evaluate_caption_metrics_s": evaluations["evaluate"]["caption_metrics_s"],
        "evaluate_beam4_s": evaluations["evaluate_beam4"]["wall_s"],
        "evaluate_beam4_over_greedy": evaluations["evaluate_beam4"]["wall_s"] / evaluations["evaluate"]["wall_s"],
        "stage2_val_s": stage2["epoch"]["val_s"],
        "stage2_val_share": stage2["epoch"]["val_s"] / stage2["epoch"]["epoch_s"],
        "peak_rss_mib": max(c["peak_rss_mib"] for c in commands.values()),
        **{key: metrics.get(source) for key, source in DATA_KEYS.items()},
        "stage1": stage1,
        "stage2": stage2,
        "steps": commands,
        "cache_entries": sorted(p.name for p in (runs / "cache").iterdir() if p.is_dir() and p.name[0] != "."),
        "standin": {"path": str(data), **stats},
        "selection": selected,
        "overrides": list(args.override),
        "machine": machine(args.gpu, load_at_start),
        "note": args.note,
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "bench_wall_s": time.perf_counter() - started,
    }
    results["targets"] = targets(results)
    return results


def _cache_step(python: str, runs: Path, overrides: list[str], env: dict[str, str]) -> dict:
    result = runs / "cache_build" / "cache_build.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys, bench_real; bench_real.build_frame_cache(sys.argv[1], sys.argv[2:])"
    argv = [python, "-c", code, str(result), "stage=pretrain_ae", *overrides]
    figures = run_command(argv, runs / "cache.log", env)
    return {**figures, "build_s": json.loads(result.read_text())["seconds"]}


def _train_step(python: str, run_dir: Path, overrides: list[str], env: dict[str, str]) -> dict:
    argv = [python, "train.py", *overrides, f"hydra.run.dir={run_dir}", *epoch_timer(run_dir)]
    figures = run_command(argv, run_dir.with_suffix(".log"), env)
    return {**figures, "epoch": first_epoch(run_dir), "run_dir": str(run_dir)}


def _evaluate_step(python: str, run_dir: Path, overrides: list[str], env: dict[str, str]) -> dict:
    argv = [python, "train.py", "stage=evaluate", *overrides, f"hydra.run.dir={run_dir}"]
    log = run_dir.with_suffix(".log")
    figures = run_command(argv, log, env)
    return {**figures, "caption_metrics_s": caption_metrics_seconds(log), "run_dir": str(run_dir)}


def machine(gpu: bool, load_at_start: float) -> dict:
    """What the figures were measured on (speed.hardware's description, as `make bench` records it), its
    bf16 support and the load averages at the start and the end (the machine was shared when they are well
    above the benchmark's own load of about 1-2)."""
    import torch
    from speed.hardware import cpu_flags
    from speed.hardware import machine as describe

    info = describe(torch.device("cuda" if gpu else "cpu"))
    info.update({
        "cpu_bf16": "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "load_average_at_start": round(load_at_start, 2),
        "load_average_at_end": round(os.getloadavg()[0], 2),
    })
    return info


def portable(value: object, workdir: Path) -> object:
    """`value` with every path of this machine relative to the repository (the interpreter as `python`), so a
    results file names no absolute path of the machine it ran on."""
    if isinstance(value, dict):
        return {k: portable(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, workdir) for v in value]
    if not isinstance(value, str):
        return value
    value = value.replace(sys.executable, "python")
    for folder in sorted({workdir, REPO}, key=lambda p: len(str(p)), reverse=True):
        relative = os.path.relpath(folder, REPO)
        value = value.replace(f"{folder}{os.sep}", "" if relative == "." else f"{relative}{os.sep}")
        value = re.sub(rf"{re.escape(str(folder))}(?![\w.-])", relative, value)
    return value


def targets(results: dict) -> dict:
    """Each target: its bound, the measured value and whether it is met."""
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = results[name]
        met = value <= bound if op == "<=" else value >= bound
        out[name] = {"target": f"{op} {bound:g}", "value": value, "met": met}
    return out


def table(results: dict) -> str:
    """The figures as a markdown table, targets first."""
    rows = [[name, f"{t['value']:.1f}", t["target"], "yes" if t["met"] else "no"]
            for name, t in results["targets"].items()]
    for key in ("cache_build_s", "stage1_epoch_s", "stage2_val_s", "evaluate_caption_metrics_s", "evaluate_beam4_s",
                *DATA_KEYS, "frames"):
        value = results[key]
        rows.append([key, "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value), "", ""])
    for step, figures in results["steps"].items():
        rows.append([f"{step}: command wall time", f"{figures['wall_s']:.1f}", "", ""])
    for stage in ("stage1", "stage2"):
        epoch = results[stage]["epoch"]
        rows.append([f"{stage}: train / val seconds of the epoch ({epoch['train_batches']} train, "
                     f"{epoch['val_batches']} val batches)",
                     f"{epoch['train_s']:.1f} / {epoch['val_s']:.1f}", "", ""])
    lines = ["| figure | measured | target | met |", "|---|---:|---:|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from standin import TEST_STORIES, TRAIN_STORIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=TRAIN_STORIES, help="train stories of the stand-in")
    parser.add_argument("--test", type=int, default=TEST_STORIES, help="test stories of the stand-in")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stand-in")
    parser.add_argument("--experiment", default="storyreasoning",
                        help="conf/experiment/<name>.yaml for the training commands ('' for data=storyreasoning)")
    parser.add_argument("--redo", action="append", default=[], choices=["stage2", "evaluate", "evaluate_beam4"],
                        help="with --keep: measure this step again (e.g. after a change to training or evaluation "
                             "code), keeping every other step's figures (repeatable; redo stage2 with both evaluations, "
                             "which read its checkpoint)")
    parser.add_argument("--gpu", action="store_true",
                        help="keep the recipe's trainer (trainer=gpu); without it every command runs with trainer=cpu")
    parser.add_argument("--override", action="append", default=[], help="Hydra override for every command (repeatable)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the steps a previous run with the same setup finished")
    parser.add_argument("--workdir", type=Path, default=BENCHMARKS / "_data",
                        help="stand-in data and runs (a stand-in already under <workdir>/standin/ is reused)")
    parser.add_argument("--note", default="", help="recorded with the figures, e.g. whether the machine was shared")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results_storyreasoning.json", help="results JSON")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = portable(run(args), args.workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved = read_json(args.out)  # a CPU run and a GPU run (under "gpu") share the file
    merged = {**saved, "gpu": results} if args.gpu else {**results, **({"gpu": saved["gpu"]} if "gpu" in saved else {})}
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print()
    print(table(results))
    info = results["machine"]
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']}; selection: {results['selection']}")
    print(f"bench took {results['bench_wall_s']:.0f} s; results in {args.out}")
    return results


if __name__ == "__main__":
    main()
