"""benchmarks/speed (`make bench`): every figure the README and docs/performance.md show is written and
is what its name says (each ratio the quotient of the timings it is made of, each target judged the right
way round); the interleaved timing charges each contestant its own seconds; the bare contestants train
on what the fit trains on."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from speed import cli, measure, report  # noqa: E402
from speed.contestants import BareStory  # noqa: E402
from speed.hardware import conv_ceiling, train_flops_per_image  # noqa: E402
from speed.timing import EpochShare, Shadows, paired  # noqa: E402
from speed.workload import tile_train_split  # noqa: E402
from storyreason.models.autoencoder import ConvAutoencoder  # noqa: E402
from tests.conftest import compose_config  # noqa: E402
from tests.data.test_datamodule import datamodule  # noqa: E402

TINY = [
    "--override", "model.autoencoder.channels=[8,16,16]",
    "--override", "model.autoencoder.latent_dim=64",
    "--override", "data.batch_size=32",
    "--override", "data.max_caption_len=12",
    *(f"--story-override=model.story.{key}={value}" for key, value in
      {"embed_dim": 16, "text_dim": 16, "fusion_dim": 16, "state_dim": 16, "decoder_dim": 16, "heads": 2,
       "latent_hidden": 8}.items()),
]
# The figures README's Performance table shows (peak GPU memory only on a GPU) and those
# docs/performance.md's CPU table adds; dotted paths into results.json.
README_FIGURES = [
    "ratios.fit_overhead_ratio.pretrain_ae", "ratios.fit_overhead_ratio.multimodal",
    "ratios.speedup_vs_seed_style.pretrain_ae", "ratios.speedup_vs_seed_style.multimodal",
    "pretrain_ae.fit_images_per_s", "multimodal.fit_windows_per_s",
    "ratios.latent_cache_speedup", "memory.peak_rss_mib",
]
PERFORMANCE_FIGURES = [
    "ratios.flop_utilization", "pretrain_ae.flop_utilization_ceiling", "pretrain_ae.train_flops_per_image",
    "gemm_peak_flops", "pretrain_ae.datamodule_frames_per_s", "multimodal.datamodule_windows_per_s",
    "ratios.speedup_vs_seed_style_first_run.pretrain_ae", "ratios.speedup_vs_seed_style_first_run.multimodal",
    "ratios.channels_last_speedup", "multimodal.latent_table_s", "cache_build_s", "demo.pretrain_ae_s",
    "demo.multimodal_s",
]


def fake_demo_run(root: Path, stage: str, start: str, end: str) -> None:
    """A finished run directory named by its start time, whose train.log ends at `end`."""
    run = root / stage / start
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "train.log").write_text(f"[{end}][storyreason.run][INFO] - metrics: {run / 'metrics.json'}\n")


def at(results: dict, name: str) -> float:
    """The number at dotted path `name`."""
    value = results
    for part in name.split("."):
        value = value[part]
    return value


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One `--quick` bench on minimal sizes: (results.json as read back, what it printed)."""
    tmp_path = tmp_path_factory.mktemp("bench")
    demo = tmp_path / "outputs"
    fake_demo_run(demo, "pretrain_ae", "2026-01-01_10-00-00_000000", "2026-01-01 10:01:30,000")
    fake_demo_run(demo, "multimodal", "2026-01-01_10-02-00_000000", "2026-01-01 10:04:00,500")
    out = tmp_path / "results.json"
    with pytest.MonkeyPatch.context() as mp:
        printed: list[str] = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        cli.main(["--quick", "--seed-batches", "1", "--tile", "2", "--workdir", str(tmp_path / "work"),
                  "--demo-root", str(demo), "--demo-timing", str(tmp_path / "absent.json"), "--out", str(out), *TINY])
    return json.loads(out.read_text()), "\n".join(printed)


def test_quick_bench_writes_every_figure_the_docs_show(quick: tuple[dict, str]) -> None:
    results, printed = quick
    bad = {}
    for name in README_FIGURES + PERFORMANCE_FIGURES:
        value = at(results, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            bad[name] = value
    assert not bad, f"figures missing or not positive finite numbers: {bad}"
    assert (results["demo"]["pretrain_ae_s"], results["demo"]["multimodal_s"]) == (90.0, 120.5)
    assert isinstance(results["bf16"]["supported"], bool) and results["bf16"]["reason"]
    for name, target in results["targets"].items():  # the table shows each target as the JSON has it
        shown = "-" if target["met"] is None else "yes" if target["met"] else "no"
        value = "skipped: bf16 not native here" if target["value"] is None else f"{target['value']:.2f}"
        assert f"| {name} | {value} | {target['target']} | {shown} |" in printed, name
    assert set(results["targets"]) == set(report.TARGETS)


def test_ratios_are_the_quotients_of_their_timings(quick: tuple[dict, str]) -> None:
    """One round: each ratio is that round's quotient, the right way round, and the ratios table repeats
    the stages' own figures."""
    results, _ = quick
    s1, s2, ratios = results["pretrain_ae"], results["multimodal"], results["ratios"]
    (r1,), (r2,) = s1["rounds"], s2["rounds"]
    expected = {
        "fit_overhead_ratio.pretrain_ae": r1["fit"] / r1["bare"],
        "fit_overhead_ratio.multimodal": r2["fit"] / r2["bare"],
        "speedup_vs_seed_style.pretrain_ae": r1["seed_style"] / r1["fit"],
        "speedup_vs_seed_style.multimodal": r2["seed_style"] / r2["fit"],
        "channels_last_speedup": r1["bare_nchw"] / r1["bare"],
        "latent_cache_speedup": r2["bare_reencode"] / r2["bare"],
        "flop_utilization": s1["train_flops_per_image"] * s1["train_frames"] / r1["fit"] / results["gemm_peak_flops"],
        "speedup_vs_seed_style_first_run.pretrain_ae":
            (s1["seed_style_setup_s"] + r1["seed_style"]) / (results["cache_build_s"] + s1["datamodule_setup_s"]
                                                             + r1["fit_call_s"]),
    }
    for name, value in expected.items():
        assert at(ratios, name) == pytest.approx(value, rel=1e-9), name
    for stage, figures in (("pretrain_ae", s1), ("multimodal", s2)):
        for name in ("fit_overhead_ratio", "speedup_vs_seed_style", "speedup_vs_seed_style_first_run"):
            assert ratios[name][stage] == figures[name]
    assert s1["fit_images_per_s"] == pytest.approx(s1["train_frames"] / r1["fit"])
    assert s2["fit_windows_per_s"] == pytest.approx(s2["train_windows"] / r2["fit"])
    assert max(results["gemm_peak_readings_flops"]) == results["gemm_peak_flops"]
    for name, target in results["targets"].items():
        assert target["value"] == report.lookup(ratios, name)


def test_paired_ratio_is_the_median_of_each_rounds_own_quotient() -> None:
    rounds = [{"slow": 2.0, "fast": 1.0}, {"slow": 9.0, "fast": 3.0}, {"slow": 4.0, "fast": 4.0}]
    assert paired(rounds, "slow", "fast") == 2.0  # not 4 / 3 (median over median) nor 15 / 8 (sums)
    assert paired(rounds, "fast", "slow") == 0.5


@pytest.mark.parametrize(("overhead", "speedup", "met"), [(1.05, 1.5, True), (1.2, 1.3, False)])
def test_targets_are_judged_the_right_way_round(overhead: float, speedup: float, met: bool) -> None:
    """`fit_overhead_ratio` is met at or under its bound, a speedup at or over it; bf16 also needs its
    L1 within 5% of fp32's."""
    ratios = {"fit_overhead_ratio": {"pretrain_ae": overhead, "multimodal": 1.0}, "latent_cache_speedup": speedup,
              "bf16_speedup": 1.5}
    judged = report.targets(ratios, {"val_l1_change": 0.0})
    assert judged["fit_overhead_ratio.pretrain_ae"]["met"] is met
    assert judged["fit_overhead_ratio.multimodal"]["met"] is True
    assert judged["latent_cache_speedup"] == {"target": ">= 1.5", "value": speedup, "met": met}
    assert judged["flop_utilization"] == {"target": ">= 0.75", "value": None, "met": None}
    assert judged["bf16_speedup"]["met"] is True
    assert report.targets(ratios, {"val_l1_change": 0.06})["bf16_speedup"]["met"] is False


def test_shadows_step_on_each_fit_batch_and_charge_their_own_seconds() -> None:
    """Contestants step on every batch the fit trains on, before it on even batches and after it on odd
    ones, in an order rotated every batch; their seconds (and their one-off `prepare`) are theirs, and
    `fit_s` is what is left: the fit's own seconds."""
    now, log = [0.0], []

    def contestant(name: str, seconds: float):
        def step(batch: object = None) -> None:
            log.append((name, batch))
            now[0] += seconds
        return step

    shadows = Shadows({"a": contestant("a", 10.0), "b": contestant("b", 100.0)},
                      prepare={"a": contestant("a-prepare", 1000.0)}, clock=lambda: now[0])
    module = SimpleNamespace(device=torch.device("cpu"))
    shadows.on_train_epoch_start(SimpleNamespace(current_epoch=0), module)
    for batch in range(4):
        shadows.on_train_batch_start(None, module, batch, batch)
        log.append(("fit", batch))
        now[0] += 1.0
        shadows.on_train_batch_end(None, module, None, batch, batch)
    shadows.on_train_end(None, module)

    assert log == [("a-prepare", None),
                   ("a", 0), ("b", 0), ("fit", 0),
                   ("fit", 1), ("b", 1), ("a", 1),
                   ("a", 2), ("b", 2), ("fit", 2),
                   ("fit", 3), ("b", 3), ("a", 3)]
    assert shadows.seconds == {"a": 1000.0 + 4 * 10.0, "b": 4 * 100.0}
    assert shadows.fit_s == 4.0


def test_epoch_share_steps_its_own_loader_a_share_per_round_and_scales_to_its_epoch() -> None:
    seen = []
    share = EpochShare(list(range(5)), seen.append, per_round=2)
    for _ in range(3):
        share.new_round()
        for fit_batch in ("x", "y", "z"):
            share(fit_batch)
        assert share.done == 2
    assert seen == [0, 1, 2, 3, 4, 0]  # on where the last round stopped, a new epoch after the end
    assert share.epoch_s(6.0) == 6.0 * 5 / 2


def test_bare_story_step_with_precomputed_latents_trains_on_what_re_encoding_gives(tmp_path: Path) -> None:
    """The stage-2 bare loop's latent table (the module's public `precompute_latents`) holds the very
    latents that re-encoding every step computes, and its steps read them from it: both contestants
    take the same loss on a batch."""
    cfg = compose_config(tmp_path, "multimodal")
    dm = datamodule(tmp_path)
    cpu = torch.device("cpu")

    def bare(cache_latents: bool) -> BareStory:
        torch.manual_seed(0)
        module = instantiate(cfg.model, tokenizer_state=dm.tokenizer.to_json(), max_caption_len=dm.max_caption_len,
                             ae_ckpt=None, cache_latents=cache_latents, _convert_="all")
        return BareStory(module, dm.frames["train"], cpu, "32-true")

    cached, reencode = bare(True), bare(False)
    cached.prepare()
    reencode.prepare()
    batch = next(iter(dm.train_dataloader()))
    losses = [step.module.training_step(batch, 0) for step in (cached, reencode)]
    torch.testing.assert_close(losses[0], losses[1])
    z_context, _ = cached.module.latents(batch, "train")
    torch.testing.assert_close(z_context, reencode.module.latents(batch, "train")[0])
    blank = {**batch, "context_frames": torch.zeros_like(batch["context_frames"])}
    torch.testing.assert_close(cached.module.latents(blank, "train")[0], z_context)  # read from the table


def test_conv_ceiling_times_exactly_the_training_step_convolutions() -> None:
    """The ceiling's FLOPs are the training step's: every convolution once, forward and backward, and no
    input gradient for the frames (the autoencoder has no other FLOP-counted op)."""
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    sizes = {"image_size": 32, "channels": (8, 16), "latent_dim": 128}
    cpu = torch.device("cpu")
    step_flops = train_flops_per_image(ConvAutoencoder(**sizes), frames, cpu, "32-true") * len(frames)
    flops, seconds = conv_ceiling(ConvAutoencoder(**sizes), frames, cpu, "32-true", repeats=2)
    assert flops == step_flops > 0
    assert seconds > 0


def test_tiled_train_split_repeats_whole_stories(tmp_path: Path) -> None:
    """`--tile` (the GPU check) repeats the train split as new stories, so story batches still form."""
    dm = datamodule(tmp_path)
    windows, stories = len(dm.datasets["train"]), dm.splits["train"].num_stories
    story_of_window = dm.story_index("train")
    tile_train_split(dm, 3)
    assert len(dm.datasets["train"]) == 3 * windows and dm.splits["train"].num_stories == 3 * stories
    tiled = dm.story_index("train")
    assert (tiled == [s + k * stories for k in range(3) for s in story_of_window]).all()
    assert dm.splits["train"].story_ids == dm.splits["train"].story_ids[:stories] * 3  # the parquet rows to read
    batch = next(iter(dm.train_dataloader()))
    index = batch["frame_index"]
    torch.testing.assert_close(batch["context_frames"], dm.frames["train"][index[:, :-1]])


def test_demo_wall_time_reads_the_demo_timing_with_its_total(tmp_path: Path) -> None:
    """(h) takes the stages and the whole command's seconds from the timing make demo writes."""
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"pretrain_ae": 95.5, "multimodal": 190.0, "total": 298.2}))
    demo = measure.demo_wall_time(tmp_path / "no-runs", timing)
    assert (demo["pretrain_ae_s"], demo["multimodal_s"], demo["total_s"]) == (95.5, 190.0, 298.2)
