"""Stage 2 module: a frozen autoencoder never changes, and cached latents give the same loss as encoding."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from storyreason.checkpoints import autoencoder_state
from storyreason.modules.multimodal import MultimodalStoryModule
from storyreason.run import build_module, train
from tests.conftest import compose_config, read_metrics


class ModeProbe(L.Callback):
    """Records, around every training step, whether the story model and any autoencoder layer are in training mode."""

    def __init__(self) -> None:
        self.modes: list[tuple[bool, bool]] = []

    def _record(self, module: MultimodalStoryModule) -> None:
        """Append (story training, any autoencoder layer training)."""
        self.modes.append((module.story.training, any(m.training for m in module.autoencoder.modules())))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._record(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._record(pl_module)


class FirstLoss(L.Callback):
    """Keeps the loss and the frame indices of the first training batch."""

    def __init__(self) -> None:
        self.loss: float | None = None
        self.frame_index: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.loss is None:
            self.loss = float(outputs["loss"])
            self.frame_index = batch["frame_index"].clone()


def ae_checkpoint(ae_run: Path) -> Path:
    """The stage-1 best checkpoint of the shared tiny run."""
    return ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"


def fit(
    root: Path, ae_run: Path, overrides: list[str], callback: L.Callback, **trainer: Any
) -> tuple[MultimodalStoryModule, dict[str, torch.Tensor]]:
    """Build the stage-2 module as train() does (seeded), fit it with `trainer` settings and no logger.

    Returns the fitted module and its story-model weights from before the fit.
    """
    cfg = compose_config(root, "multimodal", [f"model.ae_ckpt={ae_checkpoint(ae_run)}", *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, datamodule)
    story_before = {k: v.clone() for k, v in module.story.state_dict().items()}
    fitter = instantiate(cfg.trainer, callbacks=[callback], logger=False, enable_checkpointing=False, **trainer)
    fitter.fit(module, datamodule=datamodule)
    return module, story_before


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ."""
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("cache_latents", [True, False])
def test_frozen_autoencoder_stays_in_eval_mode_and_unchanged(ae_run: Path, tmp_path: Path, cache_latents: bool) -> None:
    """Two epochs with validation between them: weights and BatchNorm statistics stay stage 1's, eval mode each step."""
    probe = ModeProbe()
    module, story_before = fit(tmp_path, ae_run, [f"model.cache_latents={cache_latents}"], probe,
                 max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    assert probe.modes == [(True, False)] * 8
    stage1 = autoencoder_state(ae_checkpoint(ae_run), {})
    assert any("running_mean" in k for k in stage1)
    assert changed(stage1, module.autoencoder.state_dict()) == []
    assert changed(story_before, module.story.state_dict()), "the story model did not train"


def test_fine_tuned_autoencoder_trains(ae_run: Path, tmp_path: Path) -> None:
    """With model.freeze_ae=false the same comparison sees the autoencoder change."""
    probe = ModeProbe()
    module, _ = fit(tmp_path, ae_run, ["model.freeze_ae=false"], probe, max_steps=2, limit_val_batches=0)
    assert probe.modes == [(True, True)] * 4
    assert changed(autoencoder_state(ae_checkpoint(ae_run), {}), module.autoencoder.state_dict())


def test_cached_latents_give_the_same_first_loss(ae_run: Path, tmp_path: Path) -> None:
    """model.cache_latents=true (encode every frame once) and false (encode every batch) agree on the first step."""
    losses, batches = [], []
    for cache_latents in (True, False):
        first = FirstLoss()
        module, _ = fit(tmp_path / str(cache_latents), ae_run, [f"model.cache_latents={cache_latents}"], first,
                     max_steps=1, limit_val_batches=0)
        assert ("train" in module._latent_tables) is cache_latents
        losses.append(first.loss)
        batches.append(first.frame_index)
    assert torch.equal(batches[0], batches[1])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_channels_last_autoencoder_gives_the_same_first_loss(ae_run: Path, tmp_path: Path) -> None:
    """model.channels_last lays the autoencoder out channels-last for speed; the numbers stay the same."""
    losses = []
    for channels_last in (True, False):
        first = FirstLoss()
        module, _ = fit(tmp_path / str(channels_last), ae_run, [f"model.channels_last={channels_last}"], first,
                        max_steps=1, limit_val_batches=0)
        weight = module.autoencoder.encoder[0][0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        losses.append(first.loss)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


class ValidationRecord(L.Callback):
    """Per validation: how many batches the model's and a baseline's metrics saw, then the logged baselines."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int]] = []
        self.logged: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = pl_module.metrics["val"]
        first = lambda collection: next(iter(collection.values()))  # noqa: E731
        self.updates.append((first(m["image"])._update_count, first(m["copy_last_frame"])._update_count))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()
                            if k.startswith(("val/baseline/", "val/ae_ceiling/"))})


@pytest.mark.parametrize("freeze_ae", [True, False])
def test_baselines_of_a_frozen_autoencoder_are_scored_once(ae_run: Path, tmp_path: Path, freeze_ae: bool) -> None:
    """Frozen: scored in the first validation, the same values logged after. Fine-tuned: ae_ceiling moves,
    so every validation scores them again."""
    record = ValidationRecord()
    module, _ = fit(tmp_path, ae_run, [f"model.freeze_ae={freeze_ae}"], record, max_epochs=3, limit_train_batches=1,
                    limit_val_batches=2)
    batches = record.updates[0][0]
    assert batches >= 1
    later_updates = 0 if freeze_ae else batches
    assert record.updates == [(batches, batches)] + [(batches, later_updates)] * 2
    first, *later = record.logged
    assert {"val/baseline/copy_last_frame/image_ssim", "val/baseline/copy_last_caption/gen_token_acc",
            "val/ae_ceiling/image_l1", "val/baseline/mean_context/image_l1"} <= set(first)
    for values in later:
        assert values.keys() == first.keys()
        assert (values == first) if freeze_ae else (values["val/ae_ceiling/image_l1"] != first["val/ae_ceiling/image_l1"])
    if freeze_ae:
        module.load_autoencoder(module.autoencoder.state_dict())  # a new autoencoder: scored again
        assert module._baselines == {}


def story_width(width: int) -> list[str]:
    """Overrides that make every hidden width of the story model `width` (as the Optuna search varies them)."""
    return [f"model.story.{k}_dim={width}" for k in ("text", "fusion", "state", "decoder")]


@pytest.mark.parametrize(("width", "scale"), [(128, 1.0), (256, 0.5), (64, 1.0)])
def test_the_learning_rate_scales_down_for_a_wider_story_model_only(ae_run: Path, tmp_path: Path, width: int,
                                                                    scale: float) -> None:
    """model.lr is tuned at width 128 (model.lr_reference_width): a wider story model trains at lr x 128 / width;
    at 128 the optimizer gets model.lr exactly, so the default recipe's numbers do not change."""
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ae_checkpoint(ae_run)}", "model.scheduler=none",
                                                  *story_width(width)])
    module = build_module(cfg, instantiate(cfg.data, _convert_="all"))
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == module.learning_rate() == cfg.model.lr * scale


def test_a_wide_story_model_at_default_settings_does_not_diverge(ae_run: Path, tmp_path: Path) -> None:
    """Width 256 at the default recipe, a short run: the validation loss ends at or below its first value and
    the divergence watch stays quiet. (At this size and length the old recipe, model.lr_reference_width=null,
    does not diverge either: the GPU run that did is in docs/oracles-and-divergence.md.)"""
    cfg = compose_config(tmp_path, "multimodal", [f"model.ae_ckpt={ae_checkpoint(ae_run)}", "trainer.max_epochs=4",
                                                  "logger=csv", "~callbacks.samples", *story_width(256)])
    train(cfg)
    metrics = read_metrics(cfg)
    assert metrics["diverged"] is False
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    val_loss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val_loss) >= 4 and val_loss[-1] <= val_loss[0], val_loss
