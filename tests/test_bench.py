"""benchmarks/bench.py: the quick mode's pieces on minimal sizes write every figure, each a positive finite number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = [
    "--override", "model.autoencoder.channels=[8,16,16]",
    "--override", "model.autoencoder.latent_dim=64",
    "--override", "data.batch_size=32",
    "--override", "data.max_caption_len=12",
    *(f"--story-override=model.story.{key}={value}" for key, value in
      {"embed_dim": 16, "text_dim": 16, "fusion_dim": 16, "state_dim": 16, "decoder_dim": 16, "heads": 2,
       "latent_hidden": 8}.items()),
]


def fake_demo_run(root: Path, stage: str, start: str, end: str) -> None:
    """A finished run directory named by its start time, whose train.log ends at `end`."""
    run = root / stage / start
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "train.log").write_text(f"[{end}][storyreason.run][INFO] - metrics: {run / 'metrics.json'}\n")


def numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict, keyed by its dotted path (booleans left out)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def test_quick_bench_writes_every_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench

    demo = tmp_path / "outputs"
    fake_demo_run(demo, "pretrain_ae", "2026-01-01_10-00-00_000000", "2026-01-01 10:01:30,000")
    fake_demo_run(demo, "multimodal", "2026-01-01_10-02-00_000000", "2026-01-01 10:04:00,500")
    out = tmp_path / "results.json"
    bench.main(["--quick", "--seed-batches", "1", "--tile", "2", "--workdir", str(tmp_path / "work"), "--demo-root", str(demo),
                "--demo-timing", str(tmp_path / "absent.json"), "--out", str(out), *TINY])

    results = json.loads(out.read_text())
    for stage in ("pretrain_ae", "multimodal"):
        for ratio in ("fit_overhead_ratio", "speedup_vs_seed_style", "speedup_vs_seed_style_first_run"):
            assert stage in results["ratios"][ratio]
    assert {"latent_cache_speedup", "flop_utilization", "channels_last_speedup"} <= set(results["ratios"])
    assert {"peak_rss_mib", "after_stage1_rss_mib"} <= set(results["memory"])
    assert {"datamodule_frames_per_s", "train_flops_per_image", "seed_style_images_per_s",
            "flop_utilization_ceiling"} <= set(results["pretrain_ae"])
    assert {"datamodule_windows_per_s", "latent_table_s", "bare_reencode_epoch_s"} <= set(results["multimodal"])
    assert set(results["targets"]) == set(bench.TARGETS)
    figures = numbers({k: results[k] for k in ("ratios", "pretrain_ae", "multimodal", "memory")})
    figures["cache_build_s"], figures["gemm_peak_flops"] = results["cache_build_s"], results["gemm_peak_flops"]
    bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v > 0)}
    assert not bad, f"figures that are not positive finite numbers: {bad}"
    assert isinstance(results["bf16"]["supported"], bool) and results["bf16"]["reason"]
    assert results["demo"]["pretrain_ae_s"] == 90.0
    assert results["demo"]["multimodal_s"] == 120.5


def test_conv_ceiling_times_exactly_the_training_step_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling's FLOPs are the training step's: every convolution once, forward and backward, and no
    input gradient for the frames (the autoencoder has no other FLOP-counted op)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench
    import torch

    from storyreason.models.autoencoder import ConvAutoencoder

    torch.manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    sizes = {"image_size": 32, "channels": (8, 16), "latent_dim": 128}
    cpu = torch.device("cpu")
    step_flops = bench.train_flops_per_image(ConvAutoencoder(**sizes), frames, cpu, "32-true") * len(frames)
    flops, seconds = bench.conv_ceiling(ConvAutoencoder(**sizes), frames, cpu, "32-true", repeats=2)
    assert flops == step_flops > 0
    assert seconds > 0


def test_tiled_train_split_repeats_whole_stories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--tile` (the GPU check) repeats the train split as new stories, so story batches still form."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench
    import torch

    from tests.data.test_datamodule import datamodule

    dm = datamodule(tmp_path)
    windows, stories = len(dm.datasets["train"]), dm.splits["train"].num_stories
    story_of_window = dm.story_index("train")
    bench.tile_train_split(dm, 3)
    assert len(dm.datasets["train"]) == 3 * windows and dm.splits["train"].num_stories == 3 * stories
    tiled = dm.story_index("train")
    assert (tiled == [s + k * stories for k in range(3) for s in story_of_window]).all()
    assert dm.splits["train"].story_ids == dm.splits["train"].story_ids[:stories] * 3  # the parquet rows to read
    batch = next(iter(dm.train_dataloader()))
    index = batch["frame_index"]
    torch.testing.assert_close(batch["context_frames"], dm.frames["train"][index[:, :-1]])


def test_demo_wall_time_reads_the_demo_timing_with_its_total(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """(h) takes the stages and the whole command's seconds from the timing make demo writes."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench

    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"pretrain_ae": 95.5, "multimodal": 190.0, "total": 298.2}))
    demo = bench.demo_wall_time(tmp_path / "no-runs", timing)
    assert (demo["pretrain_ae_s"], demo["multimodal_s"], demo["total_s"]) == (95.5, 190.0, 298.2)
