"""`make demo`: train stage 1 then stage 2 on the built-in world and print the model-vs-baselines table.

`make demo-prose` (`python -m storyreason.demo --experiment prose_demo`) does the same for the world told
in paragraphs (experiment=prose_demo), with its own bars and output folder `<paths.root>/prose_demo/`.

Each stage runs train.py as the user would run it (`python train.py stage=...`), so the demo exercises
the documented commands; both run in this one interpreter, so the second stage does not pay the
~10 s of importing torch, Lightning and torchmetrics again. Extra arguments are passed to both stages
as Hydra overrides. The report, a sample grid, the wall times and the README's results block go to
`<paths.root>/demo/` (ignored by git), so a demo leaves the checkout as it was. `make docs`
(`python -m storyreason.demo --docs`) copies the last demo's files to docs/demo/ and its block into the
README, so what the README shows is always the output of a demo.
"""

from __future__ import annotations

import json
import os
import platform
import runpy
import shutil
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # before the imports below: the demo's total is the whole command's wall time

from storyreason.report import markdown_table, print_table, results_table, skills, write_text_atomic
from storyreason.rundir import RunDir, latest_finished_run

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "demo"  # the README shows these, refreshed by `make docs`
OUT = "demo"  # under paths.root: the last demo's report.md, grid.png, timing.json and README block
PUBLISHED = ("report.md", "grid.png", "timing.json")
BLOCK = "readme_block.md"
README_BEGIN = "<!-- demo results: begin (written by `make demo`, do not edit) -->"
README_END = "<!-- demo results: end -->"


def run_stage(stage: str, overrides: list[str]) -> float:
    """`python train.py stage=<stage> <overrides>`, run as __main__ here; its wall time in seconds.
    A failing stage exits as train.py does (2 for a config or data error), which ends the demo."""
    start, argv = time.perf_counter(), sys.argv
    sys.argv = [str(REPO / "train.py"), f"stage={stage}", *overrides]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv
    return time.perf_counter() - start


def _show(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def prose_checks(ae: dict[str, float], story: dict[str, float]) -> dict[str, bool]:
    """The bars of experiment=prose_demo (test split): the model writes the next paragraph better than a copy
    of the last one on every caption metric the issue names, and closes half the chrF gap to the oracle."""
    baseline = "test/baseline/"
    copy = f"{baseline}copy_last_caption/"
    chrf_skill = skills(story).get("caption chrF skill vs oracle_caption")
    return {
        "stage-1 test/l1 <= 0.03": ae["test/l1"] <= 0.03,
        "model image L1 < copy_last_frame and mean_context": story["test/image_l1"]
        < min(story[f"{baseline}copy_last_frame/image_l1"], story[f"{baseline}mean_context/image_l1"]),
        "model > copy_last_caption on gen_token_acc, BLEU-4 and chrF": all(
            story[f"test/{key}"] > story[f"{copy}{key}"] for key in ("gen_token_acc", "bleu", "chrf")),
        "caption chrF skill vs oracle_caption >= 0.5": chrf_skill is not None and chrf_skill.value >= 0.5,
    }


def quality_checks(ae: dict[str, float], story: dict[str, float]) -> dict[str, bool]:
    """The bars the default world and recipe are built to meet (test split)."""
    baseline = "test/baseline/"
    checks = {
        "stage-1 test/l1 <= 0.03": ae["test/l1"] <= 0.03,
        "model image L1 < copy_last_frame and mean_context": story["test/image_l1"]
        < min(story[f"{baseline}copy_last_frame/image_l1"], story[f"{baseline}mean_context/image_l1"]),
        "copy_last_frame L1 >= 1.5 x ae_ceiling": story[f"{baseline}copy_last_frame/image_l1"]
        >= 1.5 * story["test/ae_ceiling/image_l1"],
        "model gen_token_acc >= 0.9": story["test/gen_token_acc"] >= 0.9,
        "copy_last_caption gen_token_acc <= 0.85": story[f"{baseline}copy_last_caption/gen_token_acc"] <= 0.85,
    }
    if f"{baseline}oracle_frame/image_l1" in story:  # the built-in world's (other sources have no oracle)
        checks["oracles bound the model (image L1, gen_token_acc)"] = (
            story[f"{baseline}oracle_frame/image_l1"] <= story["test/image_l1"]
            and story[f"{baseline}oracle_caption/gen_token_acc"] >= story["test/gen_token_acc"])
    return checks


def cpu_name() -> str:
    """The processor's model name and core count, as figures must be read against the machine."""
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return f"{models[0] if models else platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def wall_times(wall: dict[str, float], total: float) -> str:
    """'pretrain_ae 100 s, multimodal 200 s; the whole command 310 s (5.2 min)'."""
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
    return f"{stages}; the whole command {total:.0f} s ({total / 60:.1f} min)"


# experiment -> (the make target that runs it, its bars)
DEMOS = {"demo": ("make demo", quality_checks), "prose_demo": ("make demo-prose", prose_checks)}


def readme_block(report: str, wall: dict[str, float], total: float, checks: dict[str, bool], argv: list[str],
                 experiment: str = "demo") -> str:
    """The README's results section: command, wall times, quality bars, tables and the sample grid."""
    command = DEMOS[experiment][0] + (f" ARGS='{' '.join(argv)}'" if argv else "")
    bars = "\n".join(f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items())
    return (
        f"`{command}` on this machine ({cpu_name()}; install excluded): {wall_times(wall, total)}.\n\n{bars}\n\n{report}\n"
        "Each row: 4 context frames | target | prediction, for test windows (the stage-2 run's `samples/test_grid_0.png`):\n\n"
        "![context, target and predicted next frame](docs/demo/grid.png)\n"
    )


def update_readme(block: str, readme: Path = REPO / "README.md") -> bool:
    """Replace the text between the README's demo markers by `block` (atomically); False without markers."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    write_text_atomic(readme, f"{head}{README_BEGIN}\n{block}{README_END}{tail}")
    return True


def write_outputs(out: Path, ae_run: Path, run: Path, wall: dict[str, float], argv: list[str],
                  experiment: str = "demo") -> dict[str, bool]:
    """The demo's report, sample grid, wall times and README block in `out`; its tables on stdout; the checks."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "samples" / "test_grid_0.png", out / "grid.png")
    ae_metrics = json.loads(RunDir(ae_run).metrics.read_text())
    metrics = json.loads(RunDir(run).metrics.read_text())
    report = (
        "Stage 1 autoencoder, test split:\n\n" + markdown_table(*results_table(ae_metrics))
        + "\n\nStage 2 model vs baselines, test split:\n\n" + markdown_table(*results_table(metrics)) + "\n"
    )
    (out / "report.md").write_text(report)
    checks = DEMOS[experiment][1](ae_metrics, metrics)
    print()
    print_table(ae_metrics, "test", title="stage 1 autoencoder, test split")
    print_table(metrics, "test", title="stage 2 model vs baselines, test split")
    total = time.perf_counter() - STARTED
    print(f"wall time: {wall_times(wall, total)}")
    timing = {**wall, "total": total}  # total: the whole command, imports and report included
    (out / "timing.json").write_text(json.dumps({k: round(v, 1) for k, v in timing.items()}, indent=2) + "\n")
    (out / BLOCK).write_text(readme_block(report, wall, total, checks, argv, experiment))
    return checks


def publish(out: Path, docs: Path = DOCS, readme: Path = REPO / "README.md") -> bool:
    """`make docs`: the last demo's files into docs/demo/ and its results block into the README."""
    missing = [name for name in (*PUBLISHED, BLOCK) if not (out / name).is_file()]
    if missing:
        raise SystemExit(f"{out} lacks {', '.join(missing)}: run `make demo` first")
    docs.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        shutil.copy(out / name, docs / name)
    return update_readme((out / BLOCK).read_text(), readme)


def main(argv: list[str]) -> None:
    experiment = "demo"
    if argv[:1] == ["--experiment"] and len(argv) > 1:
        experiment, argv = argv[1], argv[2:]
    if experiment not in DEMOS:
        raise SystemExit(f"--experiment {experiment}: no such demo; choose one of {', '.join(DEMOS)}")
    os.chdir(REPO)  # the stages resolve relative paths from the repository root, as under `make demo`
    root = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("paths.root=")), "outputs"))
    root = root if root.is_absolute() else REPO / root
    if argv == ["--docs"]:
        updated = publish(root / OUT)
        print(f"{_show(DOCS)}/ refreshed from {_show(root / OUT)}/" + (" (README.md updated)" if updated else ""))
        return
    out = root / experiment  # OUT for experiment=demo, prose_demo/ for the prose world
    recipe = [f"experiment={experiment}", *argv]  # the demo's recipe; the user's overrides (ARGS=...) win
    wall = {"pretrain_ae": run_stage("pretrain_ae", recipe)}
    ae_run = latest_finished_run(root, "pretrain_ae").path
    wall["multimodal"] = run_stage("multimodal", [*recipe, f"model.ae_ckpt={ae_run}"])
    run = latest_finished_run(root, "multimodal").path
    checks = write_outputs(out, ae_run, run, wall, argv, experiment)
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    print(f"stage 1 run: {_show(ae_run)}")
    print(f"stage 2 run: {_show(run)}  ({RunDir.METRICS}, {RunDir.CHECKPOINTS}/, samples/, tensorboard/)")
    published = " (`make docs` puts them in docs/demo/ and README.md)" if experiment == "demo" else ""
    print(f"report, sample grid and wall times: {_show(out)}/{published}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {_show(root)}")


if __name__ == "__main__":
    main(sys.argv[1:])
