"""Swappable model blocks and experiment=seed: each option trains, its checkpoint rebuilds the same block
in evaluate and predict, and the seed's autoencoder has a fully connected 384-d bottleneck."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn

from storyreason.checkpoints import module_from_checkpoint
from storyreason.errors import ConfigError
from storyreason.models.story import CaptionDecoder, LatentHead, MLPLatentHead, PlainCaptionDecoder, PointerCaptionDecoder
from storyreason.modules.base import build_components
from storyreason.run import run, train
from tests.conftest import CONF, compose_config, read_metrics
from tests.test_predict import write_story

# option override -> (the block it builds: attribute path, class)
OPTIONS = {
    "model/story/latent_head=mlp": ("story.latent_head", MLPLatentHead),
    "model/story/caption_memory=none": ("story.caption", PlainCaptionDecoder),
    "model/story/caption_memory=pointer": ("story.caption", PointerCaptionDecoder),
    "model.autoencoder.bottleneck=fc": ("autoencoder.encoder.4", nn.Linear),
}


def block(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def test_defaults_build_todays_blocks(story_run: Path) -> None:
    module, _ = module_from_checkpoint(story_run / "checkpoints" / "best.ckpt")
    assert type(module.story.latent_head) is LatentHead and type(module.story.caption) is CaptionDecoder
    assert module.autoencoder.bottleneck == "spatial" and module.autoencoder.latent_shape == (1, 8, 8)


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_trains_and_evaluate_and_predict_rebuild_it(option: str, tmp_path: Path) -> None:
    """Both stages (fc needs its own stage 1) on tiny data; the checkpoint alone rebuilds the chosen block."""
    path, cls = OPTIONS[option]
    ae_option = [option] if option.startswith("model.autoencoder") else []
    train(compose_config(tmp_path, "pretrain_ae", ae_option))
    cfg = compose_config(tmp_path, "multimodal", [option, "trainer.limit_train_batches=2"])
    train(cfg)
    metrics = read_metrics(cfg)
    assert metrics["test/image_l1"] > 0 and 0 <= metrics["test/gen_token_acc"] <= 1
    best = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    module, ckpt = module_from_checkpoint(best)
    assert isinstance(block(module, path), cls)
    torch.testing.assert_close(module.state_dict(), ckpt["state_dict"])

    evaluated = compose_config(tmp_path, "evaluate", [f"ckpt_path={best}", "eval.num_stories=1"], run_name="eval")
    run(evaluated)
    assert read_metrics(evaluated)["test/gen_token_acc"] == pytest.approx(metrics["test/gen_token_acc"], abs=1e-6)
    story = write_story(tmp_path / "story")
    predicted = compose_config(tmp_path, "predict", [f"ckpt_path={best}", f"predict.input={story}"], run_name="predict")
    run(predicted)
    assert (Path(predicted.paths.output_dir) / "caption.txt").is_file()


def test_seed_experiment_autoencoder_has_a_fully_connected_384d_bottleneck() -> None:
    """As `python train.py experiment=seed stage=pretrain_ae` composes it, without the tests' tiny sizes."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=seed", "stage=pretrain_ae"])
    assert cfg.model.mse_weight == 0 and cfg.model.scheduler == "none"  # L1 alone, Adam at a constant lr
    assert cfg.trainer.max_epochs == 10
    ae = instantiate(cfg.model, _convert_="all").autoencoder
    assert [m.out_features for m in ae.encoder if isinstance(m, nn.Linear)] == [384]
    assert ae.encode(torch.rand(2, 3, 64, 64)).shape == (2, 384)


def test_seed_experiment_runs_both_stages(tmp_path: Path) -> None:
    seed = ["experiment=seed", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    stage1 = compose_config(tmp_path, "pretrain_ae", seed)
    train(stage1)

    # a run of 2 batches is a limited run, which model.ae_ckpt=auto skips: name it
    cfg = compose_config(tmp_path, "multimodal", [*seed, f"model.ae_ckpt={stage1.paths.output_dir}"])
    assert cfg.data.story_batches is False
    train(cfg)
    story, _ = module_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    assert isinstance(story.story.latent_head, MLPLatentHead) and isinstance(story.story.caption, PlainCaptionDecoder)
    assert story.autoencoder.latent_shape == (64, 1, 1)  # the tests' tiny latent_dim
    assert "test/gen_token_acc" in read_metrics(cfg)


def test_the_prose_recipe_trains_a_context_biased_copying_decoder_on_the_hard_token_loss(ae_run: Path) -> None:
    """experiment=prose_demo's stage 2 as `make demo-prose` runs it (tiny sizes): its decoder copies, raises
    the context's words and reads its memory twice over captions read both ways, its map cells carry the
    latent head's hidden map, its training loss weights the hard tokens, and the run is scored
    on the test split."""
    cfg = compose_config(ae_run, "multimodal", ["experiment=prose_demo", "trainer.max_epochs=1",
                                                "trainer.limit_train_batches=2"], run_name="prose_recipe")
    assert cfg.data.source.captions == "prose" and cfg.model.caption_focal_gamma > 0
    train(cfg)
    story, _ = module_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    assert isinstance(story.story.caption, PointerCaptionDecoder) and story.story.caption.context_gain is not None
    assert len(story.story.caption.hops) == 1 and story.story.text.bidirectional
    hidden = story.story.latent_head.state_proj.out_features  # the recipe's 128 channels, shrunk by the tests' sizes
    assert hidden == cfg.model.story.latent_hidden == story.story.caption.motion_proj.in_features
    assert story.hparams.caption_focal_gamma == cfg.model.caption_focal_gamma
    assert "test/chrf" in read_metrics(cfg)


@pytest.mark.parametrize("target", ["os.system", "storyreason.models.story.torch.load", "storyreason.models.story.argmax_last"])
def test_a_component_outside_the_model_classes_is_refused(target: str) -> None:
    """Checkpoints carry these entries: loading one must never call anything but a model class."""
    with pytest.raises(ConfigError, match=rf"model\.story\.latent_head\._target_={target}: not a model class"):
        build_components({"latent_head": {"_target_": target}}, "model.story")
