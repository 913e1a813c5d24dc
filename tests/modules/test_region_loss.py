"""The region loss (`model.loss_weights.region`): the decoder's map cells are asked where each object is, in
the captions' terms, with the labels the built-in world knows (`SyntheticWorld.regions`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storyreason.data.sources.synthetic import NO_OBJECT, REGION_CLASSES
from storyreason.errors import ConfigError, user_error
from storyreason.run import build_module, train
from tests.conftest import compose_config, scalars

REGION = ["model.loss_weights.region=1.0"]


def test_the_region_term_is_the_cells_cross_entropy_and_training_lowers_it(ae_run: Path, tmp_path: Path) -> None:
    """After a short real run with the term on: its logged value falls, and on a batch the module's loss with
    only that term weighted is the cross-entropy of the head's logits at every map cell against the world's
    labels of the last context frame and the target; the head's distribution reaches the decoder's memory."""
    cfg = compose_config(ae_run, "multimodal", [*REGION, "trainer.max_epochs=4", "model.warmup_steps=0"], run_name="regions")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    losses = scalars(run_dir, "train/loss_region_step")
    assert len(losses) >= 10 and max(losses[-3:]) < 0.75 * losses[0], losses

    from storyreason.checkpoints import module_from_checkpoint

    module, _ = module_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    module.eval()
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    world = datamodule.source
    labels = torch.stack([torch.from_numpy(world.regions(1, i)) for i in range(world.num_stories["val"])])
    frames = batch["frame_index"][:, -2:]  # the last context frame and the target, global val frame numbers
    story_length = cfg.data.source.story_length
    expected = labels[frames // story_length, frames % story_length].long()  # (B, 2, g, g)
    assert torch.equal(batch["regions"], expected)
    assert (expected != NO_OBJECT).any() and (expected == NO_OBJECT).any()
    module.hparams.loss_weights = {"ce": 0.0, "img": 0.0, "lat": 0.0, "region": 1.0}
    with torch.no_grad():
        loss, prediction = module._step(batch, "train", generate=False)
        logits = prediction.encoding.region_logits.double()  # (B, 2, g*g, classes)
        assert logits.shape == (*expected.flatten(2).shape, REGION_CLASSES)
        log_p = logits.log_softmax(-1).gather(-1, expected.flatten(2)[..., None])[..., 0]
        module.story.region_code.weight.zero_()
        uncoded = module.encode_context(batch, module.latents(batch, "val")[0])
    assert loss.item() == pytest.approx(-log_p.mean().item(), rel=1e-5)
    cells = prediction.encoding.memory[:, -logits.shape[1] * logits.shape[2]:]  # the map cells' keys and values
    assert not torch.allclose(cells, uncoded.memory[:, -cells.shape[1]:]), "the region code never reached the memory"
    words = prediction.encoding.memory[:, : -cells.shape[1]]
    assert torch.equal(words, uncoded.memory[:, : words.shape[1]]), "the region code changed the caption's words"


def test_without_the_term_the_model_has_no_region_head(ae_run: Path, tmp_path: Path) -> None:
    """The default (weight 0) builds the model as before: no head, so its checkpoints are unchanged."""
    cfg = compose_config(ae_run, "multimodal", run_name="no_regions")
    module = build_module(cfg, instantiate_data(cfg))
    assert module.story.region_head is None
    assert not any(name.startswith("story.region_head") for name in module.state_dict())


def test_the_term_is_refused_where_no_decoder_reads_map_cells(ae_run: Path) -> None:
    """The plain caption decoder reads no memory, so there are no cells to ask: a one-line error naming the key."""
    cfg = compose_config(ae_run, "multimodal", [*REGION, "model/story/caption_memory=none"], run_name="plain")
    with pytest.raises(Exception) as raised:  # Hydra's instantiate wraps it; train.py shows the cause (user_error)
        build_module(cfg, instantiate_data(cfg))
    error = user_error(raised.value)
    assert isinstance(error, ConfigError) and "model.loss_weights.region" in str(error) and "\n" not in str(error)


def test_the_term_is_refused_in_training_on_a_source_that_gives_no_labels(ae_run: Path, tmp_path: Path) -> None:
    """A training batch without region labels (a folder or StoryReasoning source) stops the step with an
    error that names the key, before any optimizer step; a model so trained still evaluates on such data,
    without the term."""
    cfg = compose_config(ae_run, "multimodal", REGION, run_name="unlabelled")
    datamodule = instantiate_data(cfg)
    module = build_module(cfg, datamodule)  # prepares and sets up the datamodule
    batch = next(iter(datamodule.train_dataloader()))
    del batch["regions"]
    with pytest.raises(ConfigError, match=r"model\.loss_weights\.region.*no region labels"):
        module._step(batch, "train", generate=False)
    module.hparams.loss_weights = {"ce": 0.0, "img": 1.0, "lat": 0.0, "region": 1.0}
    with torch.no_grad():
        loss, prediction = module._step(batch, "val")
    image = (prediction.image - batch["target_frame"].float() / 255).abs().mean()
    assert loss.item() == pytest.approx(image.item(), rel=1e-5)


def instantiate_data(cfg):  # noqa: ANN001, ANN201 - a test helper
    """The run's datamodule, as train.py builds it."""
    from hydra.utils import instantiate

    return instantiate(cfg.data, _convert_="all")
