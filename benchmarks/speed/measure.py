"""Every measurement, stage by stage; `run` returns the results as written to JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from speed.contestants import BareAE, BareStory, SeedFrames, SeedWindows, ae_l1, parquet_frames, seed_loader
from speed.hardware import bf16_support, conv_ceiling, cuda_peak, gemm_peak, machine, peak_rss_mib, train_flops_per_image
from speed.report import targets
from speed.timing import EpochShare, Step, loader_epoch_s, measure_rounds, paired, run_epochs, timed, warm_up
from speed.workload import REPO, STAGES, benchmark_data, compose_stage, datamodule
from storyreason.data.cache import build_cache
from storyreason.models.autoencoder import ConvAutoencoder
from storyreason.modules.multimodal import MultimodalStoryModule


def epoch_figures(rounds: list[dict[str, float]], items: int, item: str, rate: str, setup_s: float,
                  seed_setup_s: float, loader_s: float) -> dict:
    """What both stages report from their rounds over `items` train frames or windows (`item`): seconds per
    epoch of each contestant and throughputs in `rate`/s, from its fastest round (the least disturbed by
    the background load), and the ratios paired within rounds."""
    best = {k: min(r[k] for r in rounds) for k in rounds[0]}
    figures = {f"train_{item}": items, "datamodule_setup_s": setup_s, "fit_epoch_s": best["fit"],
               "fit_call_s": best["fit_call_s"]}
    figures.update({f"{name}_epoch_s": best[name] for name in best if name.startswith("bare")})
    figures.update({"seed_style_setup_s": seed_setup_s, "seed_style_epoch_s": best["seed_style"]})
    figures.update({f"{name}_{rate}_per_s": items / best[name] for name in ("fit", "bare", "seed_style")})
    figures.update({
        "fit_overhead_ratio": paired(rounds, "fit", "bare"),
        "speedup_vs_seed_style": paired(rounds, "seed_style", "fit"),
        f"datamodule_{item}_per_s": items / loader_s,
        "rounds": rounds,
    })
    return figures


def stage1(cfg: DictConfig, args: argparse.Namespace, device: torch.device, precision: str, snapshot: Path,
           scratch: Path) -> tuple[dict, dict]:
    """(a), (b), (d), (e) for stage 1 and compile; returns the figures and the trained autoencoder's state."""
    L.seed_everything(cfg.seed, verbose=False)
    setup: dict[str, float] = {}
    with timed(setup, "setup_s", device):
        dm = datamodule(cfg, device, args.resident, args.tile)
    frames = len(dm.datasets["train"])
    module = instantiate(cfg.model, _convert_="all").to(device)
    hp = module.hparams

    def bare(channels_last: bool, ae: ConvAutoencoder | None = None) -> BareAE:
        return BareAE(ae or ConvAutoencoder(**hp.autoencoder), hp.lr, hp.mse_weight, channels_last, device, precision)

    print(f"stage 1: {frames} train frames, batch {cfg.data.batch_size}", flush=True)
    loader_s = loader_epoch_s(dm, device)
    contestants: dict[str, Step] = {"bare": bare(hp.channels_last), "bare_nchw": bare(False)}
    compiled: dict = {}
    if args.compile:  # the autoencoder exactly as model.compile=true builds it
        contestants["bare_compiled"] = bare(hp.channels_last, instantiate(cfg.model, compile=True, _convert_="all").autoencoder)
        try:
            compiled["first_epoch_s"] = run_epochs(contestants["bare_compiled"], dm.train_dataloader(), 1, device)
            print(f"  model.compile=true, first epoch (compiling): {compiled['first_epoch_s']:.1f} s", flush=True)
        except Exception as err:  # no C++ compiler, an unsupported op...: the rest of the benchmark still runs
            compiled["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            print(f"  model.compile=true failed, left out: {compiled['error']}", flush=True)
            del contestants["bare_compiled"]
    for step in contestants.values():
        warm_up(step, dm.train_dataloader())
    seed_setup: dict[str, float] = {}
    with timed(seed_setup, "s", device):
        images = parquet_frames(snapshot, dm.splits["train"].story_ids)
        loader = seed_loader(SeedFrames(images, cfg.data.image_size), cfg.data.batch_size, cfg.seed)
    seed = EpochShare(loader, bare(False), args.seed_batches or math.ceil(len(loader) / args.rounds))
    rounds = measure_rounds(cfg, module, dm, scratch / "pretrain_ae" / "run", contestants, seed, args.rounds, loader_s)
    sample = dm.datasets["train"].frames[: cfg.data.batch_size]
    flops = train_flops_per_image(ConvAutoencoder(**hp.autoencoder), sample, device, precision)
    conv_flops, conv_s = conv_ceiling(ConvAutoencoder(**hp.autoencoder), sample, device, precision)
    figures = epoch_figures(rounds, frames, "frames", "images", setup["setup_s"], seed_setup["s"], loader_s)
    figures.update({
        "channels_last_speedup": paired(rounds, "bare_nchw", "bare"),
        "train_flops_per_image": flops,
        "conv_flops_per_s": conv_flops / conv_s,
    })
    if "error" in compiled:
        figures["compile_error"] = compiled["error"]
    elif compiled:
        figures["compiled_first_epoch_s"] = compiled["first_epoch_s"]
        figures["compile_speedup"] = paired(rounds, "bare", "bare_compiled")
    return figures, {k: v.detach().cpu() for k, v in module.autoencoder.state_dict().items()}


def stage2(cfg: DictConfig, args: argparse.Namespace, device: torch.device, precision: str, snapshot: Path,
           scratch: Path, ae_state: dict) -> dict:
    """(a), (b), (c), (d) for stage 2."""
    L.seed_everything(cfg.seed, verbose=False)
    setup: dict[str, float] = {}
    with timed(setup, "setup_s", device):
        dm = datamodule(cfg, device, args.resident, args.tile)
    windows = len(dm.datasets["train"])

    def new_module(cache_latents: bool) -> MultimodalStoryModule:
        module = instantiate(cfg.model, tokenizer_state=dm.tokenizer.to_json(), max_caption_len=dm.max_caption_len,
                             ae_ckpt=None, cache_latents=cache_latents, _convert_="all")
        module.load_autoencoder(ae_state)
        return module.to(device)

    print(f"stage 2: {windows} train windows of {cfg.data.context} + 1 frames, batch {cfg.data.batch_size}", flush=True)
    loader_s = loader_epoch_s(dm, device)
    fit_module = new_module(True)
    contestants: dict[str, Step] = {
        "bare": BareStory(new_module(True), dm.frames["train"], device, precision),
        "bare_reencode": BareStory(new_module(False), dm.frames["train"], device, precision),
    }
    for step in contestants.values():
        step.prepare()
        warm_up(step, dm.train_dataloader())
    seed_setup: dict[str, float] = {}
    with timed(seed_setup, "s", device):
        images = parquet_frames(snapshot, dm.splits["train"].story_ids)
        data = dm.datasets["train"]
        dataset = SeedWindows(images, cfg.data.image_size, data.tokens, data.lengths, data.windows)
        loader = seed_loader(dataset, cfg.data.batch_size, cfg.seed)
    seed = EpochShare(loader, BareStory(new_module(False), dm.frames["train"], device, precision),
                      args.seed_batches or math.ceil(len(loader) / args.rounds))
    rounds = measure_rounds(
        cfg, fit_module, dm, scratch / "multimodal" / "run", contestants, seed, args.rounds, loader_s,
        before_fit=lambda: fit_module.load_autoencoder(ae_state),  # forgets the latent table: each fit encodes again
    )
    table: dict[str, float] = {}
    with timed(table, "s", device):
        fit_module.encode_frames(dm.frames["train"])
    figures = epoch_figures(rounds, windows, "windows", "windows", setup["setup_s"], seed_setup["s"], loader_s)
    figures.update({"latent_table_s": table["s"], "latent_cache_speedup": paired(rounds, "bare_reencode", "bare")})
    return figures


def precision_comparison(cfg: DictConfig, args: argparse.Namespace, device: torch.device) -> dict:
    """(f): stage-1 bare training, fp32 vs bf16-mixed, the same steps from the same weights; L1 on val."""
    supported, reason, probe = bf16_support(device)
    result: dict = {"supported": supported, "reason": reason}
    if probe is not None:
        result["probe_bf16_over_fp32_time"] = probe
    if args.bf16 == "skip" or (not supported and args.bf16 != "force"):
        return result
    dm = datamodule(cfg, device, args.resident, args.tile)
    hp = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(cfg.seed)
    start = ConvAutoencoder(**hp["autoencoder"]).state_dict()
    for precision in ("32-true", "bf16-mixed"):
        ae = ConvAutoencoder(**hp["autoencoder"])
        ae.load_state_dict(start)
        step = BareAE(ae, hp["lr"], hp["mse_weight"], hp["channels_last"], device, precision)
        seconds = run_epochs(step, dm.train_dataloader(), args.bf16_epochs, device)
        key = "bf16" if precision.startswith("bf16") else "fp32"
        result[f"{key}_images_per_s"] = args.bf16_epochs * len(dm.datasets["train"]) / seconds
        result[f"{key}_val_l1"] = ae_l1(ae, dm.frames["val"], device, hp["channels_last"])
    result["bf16_speedup"] = result["bf16_images_per_s"] / result["fp32_images_per_s"]
    result["val_l1_change"] = result["bf16_val_l1"] / result["fp32_val_l1"] - 1
    return result


def repo_relative(path: Path) -> str:
    """`path` relative to the repository: results files name no absolute path of the machine they ran on."""
    return os.path.relpath(Path(path).resolve(), REPO)


def demo_wall_time(root: Path, timing: Path) -> dict:
    """(h) Wall seconds of the demo's stages: `timing` if `make demo` wrote it, else the newest finished
    run of each stage under `root` (its directory's start time to its train.log's last line)."""
    if timing.is_file():
        seconds = json.loads(timing.read_text())
        return {"source": f"{repo_relative(timing)} (written by make demo)",
                **{f"{part}_s": float(seconds[part]) for part in (*STAGES, "total") if part in seconds}}
    out: dict = {}
    sources = []
    for stage in STAGES:
        runs = sorted(p.parent for p in (root / stage).glob("*/metrics.json") if (p.parent / "train.log").is_file())
        if not runs:
            continue
        run = runs[-1]
        start = datetime.strptime(run.name, "%Y-%m-%d_%H-%M-%S_%f")
        stamps = [line[1:24] for line in (run / "train.log").read_text().splitlines() if line.startswith("[")]
        if stamps:
            end = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f")
            out[f"{stage}_s"] = (end - start).total_seconds()
            sources.append(repo_relative(run))
    if not out:
        return {"source": None, "reason": f"no finished demo runs under {root} and no docs/demo/timing.json"}
    return {"source": "run directory start time to the last train.log line: " + ", ".join(sources), **out}


def run(args: argparse.Namespace) -> dict:
    """Every measurement; the results as written to JSON."""
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")  # as storyreason.run.train does
    info = machine(device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    snapshot = benchmark_data(args.workdir, args.frames, args.quality)
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    try:
        cfg1 = compose_stage("pretrain_ae", snapshot, scratch, args)
        precision = str(cfg1.trainer.precision)
        build: dict[str, float] = {}
        with timed(build, "s", torch.device("cpu")):
            build_cache(instantiate(cfg1.data.source, _convert_="all"), cfg1.data.cache_dir)
        print(f"frame cache built in {build['s']:.1f} s (fresh cache folder, HF Arrow copy included)", flush=True)
        memory = {"after_cache_build_rss_mib": peak_rss_mib()}
        peak = [gemm_peak(device, precision, args.gemm_size)]
        s1, ae_state = stage1(cfg1, args, device, precision, snapshot, scratch)
        peak.append(gemm_peak(device, precision, args.gemm_size))
        memory["after_stage1_rss_mib"] = peak_rss_mib()
        memory.update(cuda_peak(device, "stage1"))
        cfg2 = compose_stage("multimodal", snapshot, scratch, args)
        s2 = stage2(cfg2, args, device, precision, snapshot, scratch, ae_state)
        peak.append(gemm_peak(device, precision, args.gemm_size))  # the machine's speed drifts: the best of three
        memory["after_stage2_rss_mib"] = peak_rss_mib()
        memory.update(cuda_peak(device, "stage2"))
        bf16 = precision_comparison(cfg1, args, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    gemm = max(peak)
    memory["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        memory["cuda_max_allocated_mib"] = max(memory["stage1_cuda_max_allocated_mib"],
                                               memory["stage2_cuda_max_allocated_mib"])
    s1["flop_utilization"] = s1["train_flops_per_image"] * s1["fit_images_per_s"] / gemm
    s1["flop_utilization_bare"] = s1["train_flops_per_image"] * s1["bare_images_per_s"] / gemm
    s1["flop_utilization_ceiling"] = s1["conv_flops_per_s"] / gemm
    for figures in (s1, s2):  # a first one-epoch run on a new dataset, one-off costs on both sides
        figures["first_run_s"] = build["s"] + figures["datamodule_setup_s"] + figures["fit_call_s"]
        figures["seed_style_first_run_s"] = figures["seed_style_setup_s"] + figures["seed_style_epoch_s"]
        figures["speedup_vs_seed_style_first_run"] = figures["seed_style_first_run_s"] / figures["first_run_s"]
    ratios = {
        "fit_overhead_ratio": {"pretrain_ae": s1["fit_overhead_ratio"], "multimodal": s2["fit_overhead_ratio"]},
        "speedup_vs_seed_style": {"pretrain_ae": s1["speedup_vs_seed_style"], "multimodal": s2["speedup_vs_seed_style"]},
        "speedup_vs_seed_style_first_run": {
            "pretrain_ae": s1["speedup_vs_seed_style_first_run"],
            "multimodal": s2["speedup_vs_seed_style_first_run"],
        },
        "latent_cache_speedup": s2["latent_cache_speedup"],
        "flop_utilization": s1["flop_utilization"],
        "channels_last_speedup": s1["channels_last_speedup"],
    }
    if "bf16_speedup" in bf16:
        ratios["bf16_speedup"] = bf16["bf16_speedup"]
    if "compile_speedup" in s1:
        ratios["compile_speedup"] = s1["compile_speedup"]
    info["load_average_at_end"] = round(os.getloadavg()[0], 2)
    return {
        "ratios": ratios,
        "targets": targets(ratios, bf16),
        "pretrain_ae": s1,
        "multimodal": s2,
        "cache_build_s": build["s"],
        "gemm_peak_flops": gemm,
        "gemm_peak_readings_flops": peak,  # before stage 1, after it, after stage 2
        "bf16": bf16,
        "memory": memory,
        "demo": demo_wall_time(args.demo_root, args.demo_timing),
        "machine": info,
        "settings": {"frames": args.frames, "rounds": args.rounds, "epochs": args.epochs, "tile": args.tile,
                     "precision": precision, "batch_size": int(cfg1.data.batch_size), "resident": bool(args.resident),
                     "accelerator": args.accelerator, "compile": bool(args.compile)},
    }
