"""The results as a reader sees them: each issue target met or not, the markdown table (ratios with
their targets first, then the figures behind them), the closing lines, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from speed.workload import STAGES

TARGETS = {  # issue 6: figure -> (comparison, bound)
    "fit_overhead_ratio.pretrain_ae": ("<=", 1.05),
    "fit_overhead_ratio.multimodal": ("<=", 1.05),
    "flop_utilization": (">=", 0.75),
    "speedup_vs_seed_style.pretrain_ae": (">=", 4.0),
    "speedup_vs_seed_style.multimodal": (">=", 8.0),
    "latent_cache_speedup": (">=", 1.5),
    "bf16_speedup": (">=", 1.3),
}


def lookup(tree: dict, name: str) -> float | None:
    """The float at dotted path `name` of a nested dict (None where there is none)."""
    value: object = tree
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, float) else None


def targets(ratios: dict, bf16: dict) -> dict:
    """Each issue target: its bound, the measured value and whether it is met (None where not measured)."""
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = lookup(ratios, name)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        if name == "bf16_speedup" and value is not None:
            met = met and abs(bf16["val_l1_change"]) <= 0.05
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def table(results: dict) -> str:
    """The results as a markdown table: ratios with their targets first, then the figures behind them."""
    s1, s2, bf16 = results["pretrain_ae"], results["multimodal"], results["bf16"]
    rows = [["ratio", "measured", "target", "met"]]
    for name, target in results["targets"].items():
        value = target["value"]
        shown = "skipped: bf16 not native here" if name == "bf16_speedup" and value is None else f"{value:.2f}"
        rows.append([name, shown, target["target"], {True: "yes", False: "no", None: "-"}[target["met"]]])
    for stage in STAGES:
        value = results[stage]["speedup_vs_seed_style_first_run"]
        rows.append([f"speedup_vs_seed_style_first_run.{stage}", f"{value:.2f}", "", ""])
    rows.append(["channels_last_speedup (stage 1, bare loop)", f"{s1['channels_last_speedup']:.2f}", "", ""])
    rows.append(["flop_utilization_bare (stage 1, bare loop)", f"{s1['flop_utilization_bare']:.2f}", "", ""])
    rows.append(["flop_utilization_ceiling (stage 1 convolutions alone, each timed in isolation)",
                 f"{s1['flop_utilization_ceiling']:.2f}", "", ""])
    if "compile_speedup" in s1:
        rows.append(["compile_speedup (stage 1 bare step, model.compile=true)", f"{s1['compile_speedup']:.2f}", "", ""])
    rows.append(["**figure**", "**ours**", "**baseline**", "**unit**"])
    rows += [
        ["stage 1 epoch: Trainer.fit vs bare loop", f"{s1['fit_images_per_s']:.0f}", f"{s1['bare_images_per_s']:.0f}",
         "images/s"],
        ["stage 1 epoch: Trainer.fit vs seed style", f"{s1['fit_epoch_s']:.2f}", f"{s1['seed_style_epoch_s']:.2f}", "s"],
        ["stage 1 first run: cache build + setup + fit vs seed style", f"{s1['first_run_s']:.2f}",
         f"{s1['seed_style_first_run_s']:.2f}", "s"],
        ["stage 2 epoch: Trainer.fit vs bare loop", f"{s2['fit_windows_per_s']:.0f}", f"{s2['bare_windows_per_s']:.0f}",
         "windows/s"],
        ["stage 2 epoch: Trainer.fit vs seed style", f"{s2['fit_epoch_s']:.2f}", f"{s2['seed_style_epoch_s']:.2f}", "s"],
        ["stage 2 first run: cache build + setup + fit vs seed style", f"{s2['first_run_s']:.2f}",
         f"{s2['seed_style_first_run_s']:.2f}", "s"],
        ["stage 2 epoch (bare): cached latents vs re-encoding", f"{s2['bare_epoch_s']:.2f}",
         f"{s2['bare_reencode_epoch_s']:.2f}", "s"],
        ["stage 2 latent table of the train frames (in the epoch above)", f"{s2['latent_table_s']:.2f}", "", "s"],
        ["frame cache build (once per dataset)", f"{results['cache_build_s']:.2f}", "", "s"],
        ["DataModule alone, stage 1", f"{s1['datamodule_frames_per_s']:.0f}", "", "frames/s"],
        ["DataModule alone, stage 2", f"{s2['datamodule_windows_per_s']:.0f}", "", "windows/s"],
        ["stage 1 model FLOPs (forward + backward)", f"{s1['train_flops_per_image'] / 1e9:.3f}", "", "GFLOP/image"],
        [f"GEMM peak ({results['settings']['precision']})", f"{results['gemm_peak_flops'] / 1e9:.0f}", "", "GFLOP/s"],
    ]
    if "bf16_speedup" in bf16:
        rows.append(["stage 1 bf16-mixed vs fp32", f"{bf16['bf16_images_per_s']:.0f}", f"{bf16['fp32_images_per_s']:.0f}",
                     "images/s"])
        rows.append(["stage 1 val L1 after the same steps, bf16 vs fp32", f"{bf16['bf16_val_l1']:.4f}",
                     f"{bf16['fp32_val_l1']:.4f}", "L1"])
    if "bare_compiled_epoch_s" in s1:
        rows.append(["stage 1 epoch (bare): model.compile=true vs eager", f"{s1['bare_compiled_epoch_s']:.2f}",
                     f"{s1['bare_epoch_s']:.2f}", "s"])
        rows.append(["stage 1 first compiled epoch (compiling)", f"{s1['compiled_first_epoch_s']:.1f}", "", "s"])
    memory = results["memory"]
    rows.append(["peak memory (ru_maxrss)", f"{memory['peak_rss_mib']:.0f}", "", "MiB"])
    if "cuda_max_allocated_mib" in memory:
        rows.append(["peak GPU memory (max_memory_allocated)", f"{memory['cuda_max_allocated_mib']:.0f}", "", "MiB"])
    demo = results["demo"]
    for part in (*STAGES, "total"):
        if f"{part}_s" in demo:
            name = "the whole command" if part == "total" else part
            rows.append([f"demo wall time, {name}", f"{demo[f'{part}_s']:.0f}", "", "s"])
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def closing_lines(results: dict, out: Path) -> list[str]:
    """What the figures were measured on and where they went, printed under the table."""
    machine = results["machine"]
    return [
        f"{machine['cpu']}, {machine['cores']} cores, {machine.get('gpu', 'no GPU')}; "
        f"load average {machine['load_average_at_start']} at start, {machine['load_average_at_end']} at end",
        f"bf16: {results['bf16']['reason']}",
        f"demo wall time: {results['demo'].get('source') or results['demo'].get('reason')}",
        f"bench took {results['bench_wall_s']:.0f} s; results in {out}",
    ]


def write(results: dict, out: Path) -> None:
    """The results JSON at `out` (its folder made if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
