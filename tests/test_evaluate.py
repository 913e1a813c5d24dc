"""`stage=evaluate`: a checkpoint alone reproduces its training run's metrics and writes the report files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchmetrics import MetricCollection

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from storyreason.evaluate import grid_windows
from storyreason.metrics import image_metrics, update_captions, update_images
from storyreason.modules.multimodal import MultimodalStoryModule
from storyreason.report import PREDICTORS, STORY_METRICS
from storyreason.run import run
from tests.conftest import compose_config

CLOSE = dict(rel_tol=1e-6, abs_tol=1e-6)  # float32 sums differ by an ulp between processes: 1e-6 of a PSNR of 13


def evaluate_run(root: Path, runs: Path, name: str, overrides: list[str]) -> Path:
    """Run stage=evaluate under `root`, reusing the data cache of `runs`; its run directory."""
    cfg = compose_config(root, "evaluate", [f"paths.cache={runs / 'cache'}", *overrides], run_name=name)
    run(cfg)
    return Path(cfg.paths.output_dir)


def split_metrics(run_dir: Path, split: str) -> dict[str, float]:
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k.startswith(f"{split}/")}


@pytest.fixture(scope="module")
def evaluated(story_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test split of `story_run`, evaluated from its run directory."""
    return evaluate_run(tmp_path_factory.mktemp("eval"), story_run.parents[1], "test", [f"ckpt_path={story_run}"])


def assert_reproduced(trained: dict[str, float], evaluated: dict[str, float]) -> None:
    assert sorted(evaluated) == sorted(trained)
    differ = {k: (trained[k], evaluated[k]) for k in trained if not math.isclose(trained[k], evaluated[k], **CLOSE)}
    assert not differ, f"evaluation does not reproduce training: {differ}"


def test_evaluate_reproduces_the_training_test_metrics(story_run: Path, evaluated: Path) -> None:
    assert_reproduced(split_metrics(story_run, "test"), split_metrics(evaluated, "test"))


def test_a_checkpoint_file_alone_reproduces_the_val_metrics(story_run: Path, tmp_path: Path) -> None:
    """Outside its run directory, with the autoencoder checkpoint it was trained from gone, it still evaluates."""
    ckpt = torch.load(story_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["ae_ckpt"] = str(tmp_path / "gone.ckpt")
    torch.save(ckpt, tmp_path / "alone.ckpt")
    out = evaluate_run(tmp_path, story_run.parents[1], "val",
                       [f"ckpt_path={tmp_path / 'alone.ckpt'}", "eval.split=val", "eval.num_stories=1"])
    assert_reproduced(split_metrics(story_run, "val"), split_metrics(out, "val"))
    assert "no curves" in (out / "report.md").read_text()


def test_evaluate_stage1_checkpoint(ae_run: Path, tmp_path: Path) -> None:
    trained = ae_run / "pretrain_ae" / "run"
    out = evaluate_run(tmp_path, ae_run, "ae", [f"ckpt_path={trained}", "eval.num_stories=2"])
    assert_reproduced(split_metrics(trained, "test"), split_metrics(out, "test"))
    assert (out / "grids" / "grid_00.png").is_file()
    assert "| metric | autoencoder |" in (out / "report.md").read_text()


def test_report_has_every_metric_for_the_model_and_every_baseline(evaluated: Path) -> None:
    report = (evaluated / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| metric"))
    assert header == "| metric | " + " | ".join(PREDICTORS) + " |"
    for label, _ in STORY_METRICS.values():
        assert f"| {label} " in report
    for image in ("grids/grid_00.png", "curves/losses.png"):
        assert (evaluated / image).is_file() and f"]({image})" in report


def test_captions_tsv_has_every_window(story_run: Path, evaluated: Path) -> None:
    with open(evaluated / "captions.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["story_id", "target_frame", "reference", "generated", "copy_last_caption"]
    windows = 6 * (6 - 4)  # TINY: 6 test stories of 6 frames, K = 4
    assert len(rows) == 1 + windows
    assert all(len(r) == 5 and r[0].startswith("synthetic-test-") and r[2] for r in rows[1:])
    assert [r[1] for r in rows[1:3]] == ["4", "5"]  # a story's windows predict its frames 4 and 5


def test_captions_tsv_references_are_the_data_captions_whole(story_run: Path, evaluated: Path, tmp_path: Path) -> None:
    """The reference column is each target frame's caption as the data has it, not the ids cut to the caption length."""
    cfg = compose_config(tmp_path, "multimodal", [f"paths.cache={story_run.parents[1] / 'cache'}"])
    data = instantiate(cfg.data, _convert_="all")
    data.setup("test")
    test = data.splits["test"]
    with open(evaluated / "captions.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    stories = {sid: i for i, sid in enumerate(test.story_ids)}
    for row in rows:
        frame = test.offsets[stories[row["story_id"]]] + int(row["target_frame"])
        assert row["reference"] == test.captions[frame]
        assert row["copy_last_caption"] == test.captions[frame - 1]


def generated_captions(run_dir: Path) -> list[str]:
    """The `generated` column of an evaluation's captions.tsv, in window order."""
    with open(run_dir / "captions.tsv", newline="") as f:
        return [row["generated"] for row in csv.DictReader(f, delimiter="\t")]


def test_beam_search_changes_only_the_generated_caption_metrics(story_run: Path, evaluated: Path, tmp_path: Path) -> None:
    """eval.beam_size=3 writes the captions a beam of 3 decodes from the checkpoint, which on this run differ
    from greedy's somewhere; the frame, teacher-forced and baseline metrics stay those of greedy decoding."""
    from tests.modules.test_multimodal import checkpoint_and_test_batches

    overrides = [f"ckpt_path={story_run}", "eval.beam_size=3", "eval.num_stories=1"]
    out = evaluate_run(tmp_path, story_run.parents[1], "beam", overrides)
    greedy, beam = split_metrics(story_run, "test"), split_metrics(out, "test")
    assert sorted(beam) == sorted(greedy)
    for key in ("test/image_l1", "test/token_acc", "test/perplexity", "test/baseline/copy_last_caption/bleu"):
        assert math.isclose(beam[key], greedy[key], **CLOSE)

    module, batches = checkpoint_and_test_batches(story_run, tmp_path / "direct")
    module.decoding = {"beam_size": 3}
    with torch.no_grad():
        by_beam = [caption for batch in batches for caption in module(batch, "test").captions]
    assert generated_captions(out) == by_beam
    assert by_beam != generated_captions(evaluated), "beam and greedy agree everywhere: this run cannot tell them apart"


def test_unknown_split_is_refused(story_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"eval.split=train \(a string\): expected one of val, test"):
        evaluate_run(tmp_path, story_run.parents[1], "bad", [f"ckpt_path={story_run}", "eval.split=train"])


def test_grid_stories_are_spread_over_the_split_and_fixed() -> None:
    ids = ["a", "a", "b", "b", "c", "d", "d", "e"]
    assert grid_windows(ids, 3) == [0, 4, 7]  # first windows of stories a, c, e
    assert grid_windows(ids, 10) == [0, 2, 4, 5, 7]
    assert grid_windows(ids, 3) == grid_windows(list(ids), 3)


def test_every_metric_is_perfect_on_the_target() -> None:
    """metric(target, target) is the best value of every metric stage 2 (and stage 1) computes."""
    vocab = 12
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 16, 16)
    reference = torch.tensor([[4, 5, 6, 7, 8, EOS_ID, PAD_ID], [9, 10, 11, 4, EOS_ID, PAD_ID, PAD_ID],
                              [5, 5, 6, 6, 7, 7, EOS_ID]])
    text = ["a red ball moves left", "a blue box up", "the the red red ball ball"]
    values: dict[str, float] = {}
    for name, metric in MultimodalStoryModule._split_metrics("test/", vocab).items():
        if name == "token_acc":
            metric.update(reference.flatten(), reference.flatten())
        elif name == "perplexity":
            metric.update(F.one_hot(reference, vocab).float() * 100, reference)
        elif "gen_token_acc" in metric:
            update_captions(metric, reference, reference, text, text)
        else:
            update_images(metric, frames, frames)
        result = metric.compute()
        if isinstance(metric, MetricCollection):
            values |= {k: v.item() for k, v in result.items()}
        else:
            values[f"test/{name}"] = result.item()
    stage1 = image_metrics("test/", stem="")
    update_images(stage1, frames, frames)
    values |= {k: v.item() for k, v in stage1.compute().items()}

    assert {f"test/{k}" for k in STORY_METRICS} <= set(values), "a reported metric is not computed"
    best = {"l1": 0.0, "mse": 0.0, "perplexity": 1.0}
    for key, value in values.items():
        name = key.rsplit("/", 1)[-1].removeprefix("image_")
        if name == "psnr":
            assert value == math.inf, key
        else:
            assert value == pytest.approx(best.get(name, 1.0), abs=1e-5), key


def test_val_metrics_of_a_best_checkpoint_that_is_not_the_last_weights(ae_run: Path, tmp_path: Path) -> None:
    """With the first of two epochs kept as best (mode=max on the falling val/loss), metrics.json's val
    split is scored on that checkpoint, not on the weights the fit ended with."""
    cfg = compose_config(ae_run, "multimodal", ["trainer.max_epochs=2", "stage.mode=max"], run_name="first_is_best")
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["epoch"] == 0
    out = evaluate_run(tmp_path, ae_run, "val", [f"ckpt_path={run_dir}", "eval.split=val", "eval.num_stories=1"])
    assert_reproduced(split_metrics(run_dir, "val"), split_metrics(out, "val"))


def test_evaluate_runs_the_model_once_per_batch(story_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's captions and grids come from the predictions the metrics were computed from: one forward
    and one caption decoding per batch, whatever the decoding (here a beam of eval.beam_size)."""
    from storyreason.modules import multimodal

    calls = {"forward": 0, "decode": 0}
    beams: set[int] = set()
    forward, decode = multimodal.MultimodalStoryModule.forward, multimodal.decode_captions

    def counted_forward(self, *args, **kwargs):
        calls["forward"] += 1
        return forward(self, *args, **kwargs)

    def counted_decode(*args, **kwargs):
        calls["decode"] += 1
        beams.add(kwargs.get("beam_size", 1))
        return decode(*args, **kwargs)

    monkeypatch.setattr(multimodal.MultimodalStoryModule, "forward", counted_forward)
    monkeypatch.setattr(multimodal, "decode_captions", counted_decode)
    out = evaluate_run(tmp_path, story_run.parents[1], "once",
                       [f"ckpt_path={story_run}", "data.eval_batch_size=5", "eval.beam_size=2", "eval.num_stories=6"])
    batches = math.ceil(6 * (6 - 4) / 5)  # 12 test windows in batches of 5
    assert calls == {"forward": batches, "decode": batches}
    assert beams == {2}, "eval.beam_size did not reach the caption decoding"
    with open(out / "captions.tsv", newline="") as f:
        assert len(list(csv.reader(f, delimiter="\t"))) == 1 + 12
    assert (out / "grids" / "grid_00.png").is_file()


@pytest.mark.parametrize("logger", ["csv", "null"])
def test_a_run_without_tensorboard_trains_and_evaluates(ae_run: Path, tmp_path: Path, logger: str) -> None:
    """logger=csv writes csv/metrics.csv and evaluate draws its loss curves from it; logger=null logs nothing."""
    cfg = compose_config(tmp_path, "pretrain_ae", [f"logger={logger}", f"paths.cache={ae_run / 'cache'}"])
    run(cfg)
    trained = Path(cfg.paths.output_dir)
    assert not (trained / "tensorboard").exists()
    assert (trained / "csv" / "metrics.csv").is_file() == (logger == "csv")
    out = evaluate_run(tmp_path, ae_run, "eval", [f"ckpt_path={trained}", "eval.num_stories=1"])
    assert_reproduced(split_metrics(trained, "test"), split_metrics(out, "test"))
    assert (out / "curves" / "losses.png").is_file() == (logger == "csv")


def test_hparams_are_the_experiment_config_without_class_paths_or_long_values(story_run: Path) -> None:
    from storyreason.run import hparams_record

    record = hparams_record(OmegaConf.load(story_run / ".hydra" / "config.yaml"))
    assert record["seed"] == 42 and record["stage.name"] == "multimodal" and "model.lr" in record
    assert not [k for k in record if k.endswith("_target_") or k.split(".")[0] in ("paths", "callbacks", "logger")]
    assert all(isinstance(v, (bool, int, float, str)) and len(str(v)) <= 200 for v in record.values())
    assert "tokenizer_state" not in (story_run / "tensorboard" / "hparams.yaml").read_text(), "the module's hparams were logged"


def test_other_data_than_training_are_named_before_the_pass(story_run: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint scored on other data settings than its run's: the warning names each differing key with
    both values before any batch runs (a prose model scored on list captions reads as broken otherwise),
    and the report says so; on the run's own settings nothing is said."""
    import logging

    import storyreason.evaluate as evaluate

    passes = []
    original = evaluate.checkpoint_datamodule

    def record(*args, **kwargs):
        passes.append(caplog.text)
        return original(*args, **kwargs)

    with caplog.at_level(logging.WARNING, logger="storyreason.evaluate"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "checkpoint_datamodule", record)
        out = evaluate_run(tmp_path, story_run.parents[1], "other",
                           [f"ckpt_path={story_run}", "eval.split=val", "eval.num_stories=1", "data.source.p_leave=0.5"])
    assert "data.source.p_leave: 0.5 here vs 0.01 in training" in passes[0]
    assert "**not** the training run's data settings" in (out / "report.md").read_text()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="storyreason.evaluate"):
        out = evaluate_run(tmp_path, story_run.parents[1], "same", [f"ckpt_path={story_run}", "eval.split=val",
                                                                    "eval.num_stories=1"])
    assert "differ" not in caplog.text
    assert "(the training run's data settings)" in (out / "report.md").read_text()
