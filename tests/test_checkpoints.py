"""Stage 2 refuses a missing or incompatible autoencoder checkpoint with a message that says what to do."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from storyreason.callbacks import SampleLogger
from storyreason.checkpoints import CheckpointError, module_from_checkpoint, resolve_ae_checkpoint
from storyreason.data.tokenizer import CaptionTokenizer, WordTokenizer
from storyreason.evaluate import checkpoint_datamodule
from storyreason.modules.autoencoder import AutoencoderModule
from storyreason.modules.multimodal import MultimodalStoryModule
from storyreason.run import train
from storyreason.rundir import RunDir, latest_finished_run
from tests.conftest import compose_config

RUN_STAGE1_FIRST = r"Run stage 1 first \(python train\.py stage=pretrain_ae\)"
LATENT_MISMATCH = r"has autoencoder\.latent_dim=64 but this run needs model\.autoencoder\.latent_dim=128"


def test_missing_checkpoint_path_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, "multimodal", ["model.ae_ckpt=/nonexistent/best.ckpt"])
    message = rf"model\.ae_ckpt=/nonexistent/best\.ckpt does not exist\. {RUN_STAGE1_FIRST}"
    with pytest.raises(CheckpointError, match=message):
        train(cfg)


def test_auto_without_a_stage1_run_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, "multimodal")
    assert cfg.model.ae_ckpt == "auto"
    message = rf"model\.ae_ckpt=auto found no autoencoder: .*{RUN_STAGE1_FIRST} or set model\.ae_ckpt=PATH"
    with pytest.raises(CheckpointError, match=message):
        train(cfg)


def test_stage2_checkpoint_as_autoencoder_is_refused(story_run: Path, tmp_path: Path) -> None:
    ckpt = story_run / "checkpoints" / "best.ckpt"
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ckpt}"])
    with pytest.raises(CheckpointError, match=r"is not a stage-1 autoencoder checkpoint \(stage='multimodal'\)"):
        train(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.autoencoder.latent_dim=128", LATENT_MISMATCH),
        ("model.autoencoder.channels=[8,16,32]", r"has autoencoder\.channels=\[8, 16, 16\] but this run needs"),
    ],
)
def test_autoencoder_size_mismatch_is_refused(ae_run: Path, tmp_path: Path, override: str, message: str) -> None:
    ckpt = ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ckpt}", override])
    with pytest.raises(CheckpointError, match=message):
        train(cfg)


def test_a_stage1_run_directory_means_its_best_checkpoint(ae_run: Path) -> None:
    run = ae_run / "pretrain_ae" / "run"
    assert resolve_ae_checkpoint(str(run), ae_run) == run / "checkpoints" / "best.ckpt"
    assert resolve_ae_checkpoint("auto", ae_run) == run / "checkpoints" / "best.ckpt"


def fake_run(root: Path, stage: str, name: str, finished: bool = True, mtime: float = 1e9) -> Path:
    """A run directory with what `latest_finished_run` reads: .hydra/config.yaml, best.ckpt and metrics.json."""
    run = root / stage / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"stage:\n  name: {stage}\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    if finished:
        (run / "metrics.json").write_text("{}")
        os.utime(run / "metrics.json", (mtime, mtime))
    return run


def test_auto_takes_the_newest_finished_stage1_run(tmp_path: Path) -> None:
    fake_run(tmp_path, "pretrain_ae", "old", mtime=1e9)
    newest = fake_run(tmp_path, "pretrain_ae", "new", mtime=2e9)
    fake_run(tmp_path, "pretrain_ae", "unfinished", finished=False)
    fake_run(tmp_path, "multimodal", "later_stage2", mtime=3e9)
    assert latest_finished_run(tmp_path, "pretrain_ae") == RunDir(newest)


def _not_a_checkpoint(folder: Path, kind: str) -> Path:
    """A file given as a checkpoint that is not one."""
    import torch

    path = folder / f"{kind}.ckpt"
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("these are my notes, not weights\n")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"epoch": 1, "hyper_parameters": {"stage": "pretrain_ae"}}, path)
    return path


NOT_CHECKPOINTS = ["random bytes", "text", "list", "dict without state_dict"]


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path, kind: str) -> None:
    from storyreason.checkpoints import autoencoder_state, module_from_checkpoint

    path = _not_a_checkpoint(tmp_path, kind)
    for load in (module_from_checkpoint, lambda p: autoencoder_state(p, {})):
        with pytest.raises(CheckpointError, match=rf"{path}.* is not a (Lightning )?checkpoint"):
            load(path)


@pytest.mark.parametrize("stage", ["evaluate", "predict", "multimodal"])
def test_a_random_file_as_checkpoint_exits_2_in_one_line(tmp_path: Path, stage: str) -> None:
    """Through train.py for evaluate (exit 2, stderr, no run directory left); in this process for the others."""
    from tests.commands import output, train_py
    from tests.test_errors import refused_in_process

    path = _not_a_checkpoint(tmp_path, "random bytes")
    given = [f"model.ae_ckpt={path}"] if stage == "multimodal" else [f"ckpt_path={path}", f"predict.input={tmp_path}"]
    given = given[: 1 if stage == "evaluate" else 2]
    if stage != "evaluate":
        error = refused_in_process(tmp_path / "runs", stage, given)
        assert f"{path} is not a checkpoint" in str(error)
        return
    result = train_py(tmp_path / "runs", *given, stage=stage)
    assert result.returncode == 2, output(result)
    assert f"{path} is not a checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("train.log"))


@pytest.mark.parametrize("stage", ["pretrain_ae", "multimodal"])
def test_best_checkpoints_load_through_lightning_and_predict_what_the_trained_module_did(
    ae_run: Path, story_run: Path, tmp_path: Path, stage: str
) -> None:
    """`<Module>.load_from_checkpoint(best.ckpt, weights_only=True)` gives the trained module back: its weights,
    its tokenizer, and on the test split the metrics and the sample grid and captions training ended with."""
    run = RunDir(story_run if stage == "multimodal" else ae_run / "pretrain_ae" / "run")
    cls = MultimodalStoryModule if stage == "multimodal" else AutoencoderModule
    module = cls.load_from_checkpoint(run.best, weights_only=True)
    saved = torch.load(run.best, map_location="cpu", weights_only=True)
    state = module.state_dict()
    assert state.keys() == saved["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in saved["state_dict"].items())
    if stage == "multimodal":
        assert module.tokenizer.to_json() == run.tokenizer.read_text()

    cfg = compose_config(tmp_path, "evaluate", [f"paths.cache={run.path.parents[1] / 'cache'}"])
    datamodule = checkpoint_datamodule(cfg, saved["hyper_parameters"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, deterministic=True,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[SampleLogger()])
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    trained = {k: v for k, v in json.loads(run.metrics.read_text()).items() if k.startswith("test/")}
    assert tested.keys() == trained.keys()
    differ = {k: (trained[k], tested[k]) for k in trained if not math.isclose(trained[k], tested[k], rel_tol=1e-6)}
    assert not differ, f"the loaded module does not score what the trained one did: {differ}"
    for grid in sorted((run.path / "samples").glob("*.png")):
        with Image.open(grid) as want, Image.open(tmp_path / "samples" / grid.name) as got:
            assert want.tobytes() == got.tobytes(), f"{grid.name} differs"
    if stage == "multimodal":
        captions = "test_captions.txt"
        assert (tmp_path / "samples" / captions).read_text() == (run.path / "samples" / captions).read_text()


def test_a_checkpoint_with_the_old_vocab_hyperparameter_loads_with_its_word_vocabulary(
    story_run: Path, tmp_path: Path
) -> None:
    """Stage-2 checkpoints saved before tokenizers were objects hold `vocab`, a list of whitespace words."""
    ckpt = torch.load(RunDir(story_run).best, map_location="cpu", weights_only=True)
    vocab = list(CaptionTokenizer.from_json(ckpt["hyper_parameters"].pop("tokenizer_state")).vocab)
    ckpt["hyper_parameters"]["vocab"] = vocab
    torch.save(ckpt, tmp_path / "old.ckpt")
    module, _ = module_from_checkpoint(tmp_path / "old.ckpt")
    assert isinstance(module.tokenizer, WordTokenizer) and not module.tokenizer.split_punctuation
    assert module.tokenizer.vocab == vocab
    assert "vocab" not in module.hparams and isinstance(module.hparams.tokenizer_state, str)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
