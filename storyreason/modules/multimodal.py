"""Stage 2: the multimodal story model over a pretrained (by default frozen) autoencoder."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MetricCollection
from tqdm.auto import tqdm

from storyreason.data.tokenizer import PAD_ID, CaptionTokenizer
from storyreason.errors import ConfigError
from storyreason.metrics import (
    TokenPerplexity, caption_metrics, image_metrics, token_accuracy, update_captions, update_images,
)
from storyreason.models.autoencoder import ConvAutoencoder
from storyreason.models.decoding import decode_captions
from storyreason.data.sources.synthetic import REGION_CLASSES
from storyreason.models.story import PlainCaptionDecoder, StoryEncoding, StoryModel, argmax_last
from storyreason.modules.base import (StageModule, build_components, compile_inner, to_unit, weighted_loss,
                                      width_scaled_lr)

log = logging.getLogger(__name__)
# The frozen autoencoder is kept in eval mode on purpose (its BatchNorm statistics stay stage 1's).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

Batch = dict[str, torch.Tensor]


@dataclass
class Prediction:
    """What the model predicts for a batch of windows; every consumer (losses and metrics, evaluate's
    report, the sample grids, predict) reads this instead of running the model again.

    encoding:      the story model's encoding of the context (its `latent` is the predicted next latent)
    image:         (B, 3, H, W) the predicted next frame, decoded by the autoencoder (not clamped)
    target_latent: (B, Z) the true next frame's latent, None when the batch has no target
    caption_ids:   (B, L') generated caption ids under `decoding` (greedy or beam), None when not generated
    captions:      the generated captions as text
    """

    encoding: StoryEncoding
    image: torch.Tensor
    target_latent: torch.Tensor | None = None
    caption_ids: torch.Tensor | None = None
    captions: list[str] | None = None


BASELINES = ("copy_last_frame", "mean_context", "copy_last_caption", "ae_ceiling")  # scored beside the model
ORACLES = ("oracle_frame", "oracle_caption")  # scored too where the batches carry them (the built-in world)


class MultimodalStoryModule(StageModule):
    """Loss = w_ce * caption CE (padding ignored) + w_img * image L1 + w_lat * latent MSE.

    With a frozen autoencoder (default) it stays in eval mode, and the latents of every frame of a
    split are computed once (`cache_latents`) instead of re-encoding the context at every step.
    """

    def __init__(
        self,
        tokenizer_state: str,
        autoencoder: dict,
        story: dict,
        context: int = 4,
        max_caption_len: int = 32,
        ae_ckpt: str | None = "auto",
        freeze_ae: bool = True,
        cache_latents: bool = True,
        loss_weights: dict[str, float] | None = None,
        caption_focal_gamma: float = 0.0,
        lr: float = 1e-3,
        lr_reference_width: int | None = None,
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
        val_caption_windows: int | None = None,
        val_caption_every_n_epochs: int = 1,
        stage: str = "multimodal",
    ) -> None:
        super().__init__()
        loss_weights = dict(loss_weights or {"ce": 1.0, "img": 1.0, "lat": 1.0})
        unknown = set(loss_weights) - {"ce", "img", "lat", "region"}
        if unknown:
            raise ConfigError(f"model.loss_weights has unknown term(s) {sorted(unknown)}; allowed: ce, img, lat, region")
        if not any(loss_weights.values()):
            raise ConfigError("model.loss_weights are all zero: at least one of ce, img, lat must be > 0")
        if caption_focal_gamma < 0:
            raise ConfigError(f"model.caption_focal_gamma={caption_focal_gamma}: must be >= 0 (0 = plain mean)")
        self.save_hyperparameters(logger=False)  # in every checkpoint; the loggers get run.py's clean record
        self.hparams.loss_weights = loss_weights
        self.tokenizer = CaptionTokenizer.from_json(tokenizer_state)
        vocab = self.tokenizer.vocab
        self.autoencoder = ConvAutoencoder(**autoencoder)
        components = build_components(story, "model.story")  # its latent head and caption decoder
        regions = {"region_classes": REGION_CLASSES} if loss_weights.get("region") else {}
        self.story = StoryModel(len(vocab), self.autoencoder.latent_shape, max_caption_len, **components, **regions)
        if regions and isinstance(self.story.caption, PlainCaptionDecoder):
            raise ConfigError("model.loss_weights.region > 0 needs a caption decoder that reads map cells "
                              "(model/story/caption_memory=attention or pointer)")
        if channels_last:  # the autoencoder's convolutions: about 2x faster encoding on a CPU
            self.autoencoder.to(memory_format=torch.channels_last)
        if freeze_ae:  # eval now: Lightning >= 2.2 keeps the modes a module has when fit starts, never calls train()
            self.autoencoder.requires_grad_(False).eval()
        if compile:  # the convolutional and attention blocks; the GRUs and step-by-step decoding stay eager
            compile_inner(self.autoencoder.encoder, self.autoencoder.decoder, self.story.fusion, self.story.latent_head)
        self._latent_tables: dict[str, torch.Tensor] = {}
        self._baselines: dict[str, dict[str, torch.Tensor]] = {}  # split -> the baselines' values, once per run
        self.decoding: dict = {}  # decode_captions settings (beam_size, max_len, ...); evaluation sets them
        self._caption_seconds = 0.0  # spent scoring captions (text metrics) in the current val/test pass
        self._val_windows_generated = 0  # windows of the current validation given free-running captions
        self.metrics = nn.ModuleDict({s: self._split_metrics(f"{s}/", len(vocab)) for s in ("val", "test")})

    @staticmethod
    def _split_metrics(prefix: str, vocab_size: int) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "image": image_metrics(prefix),
                "token_acc": token_accuracy(vocab_size),
                "perplexity": TokenPerplexity(),
                "caption": caption_metrics(prefix, vocab_size),
                "copy_last_frame": image_metrics(f"{prefix}baseline/copy_last_frame/"),
                "mean_context": image_metrics(f"{prefix}baseline/mean_context/"),
                "copy_last_caption": caption_metrics(f"{prefix}baseline/copy_last_caption/", vocab_size),
                "ae_ceiling": image_metrics(f"{prefix}ae_ceiling/"),
                "oracle_frame": image_metrics(f"{prefix}baseline/oracle_frame/"),
                "oracle_caption": caption_metrics(f"{prefix}baseline/oracle_caption/", vocab_size),
            }
        )

    def learning_rate(self) -> float:
        """`lr`, scaled down for a story model wider than `lr_reference_width` (`width_scaled_lr`)."""
        story = self.hparams.story
        widths = [story[k] for k in ("text_dim", "fusion_dim", "state_dim", "decoder_dim") if k in story]
        return width_scaled_lr(self.hparams.lr, widths, self.hparams.lr_reference_width)

    def train(self, mode: bool = True) -> MultimodalStoryModule:
        """A frozen autoencoder stays in eval mode, so BatchNorm statistics never drift."""
        super().train(mode)
        if self.hparams.freeze_ae:
            self.autoencoder.eval()
        return self

    def load_autoencoder(self, state: dict[str, torch.Tensor]) -> None:
        self.autoencoder.load_state_dict(state)
        self._latent_tables.clear()
        self._baselines.clear()  # ae_ceiling decodes with it

    # ---- latents -------------------------------------------------------------------------------

    @torch.no_grad()
    def _latent_table(self, split: str) -> torch.Tensor | None:
        """(N, Z) latents of every frame of `split`, computed once with the frozen encoder."""
        if not (self.hparams.freeze_ae and self.hparams.cache_latents):
            return None
        if split not in self._latent_tables:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            frames = getattr(datamodule, "frames", {}).get(split)
            if frames is None:
                return None
            self._latent_tables[split] = self.encode_frames(frames, desc=f"encoding {split} frames")
        return self._latent_tables[split]

    def precompute_latents(self, split: str, frames: torch.Tensor) -> None:
        """Encode `split`'s (N, 3, H, W) uint8 frames once for its batches' `frame_index`, as a Trainer's
        datamodule has it done at the split's first batch: for loops without a Trainer. Used with
        `freeze_ae` and `cache_latents`; `load_autoencoder` forgets it."""
        self._latent_tables[split] = self.encode_frames(frames)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, chunk: int | None = None, desc: str | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 frames -> (N, Z) latents of the autoencoder, `chunk` frames at a time
        (default: 256 on a CPU, where small chunks stay in its caches; 8192 on a GPU, to fill it)."""
        chunk = chunk or (256 if self.device.type == "cpu" else 8192)
        chunks = [
            self.autoencoder.encode(self.unit_frames(frames[i : i + chunk].to(self.device))).float()
            for i in tqdm(range(0, len(frames), chunk), desc=desc, leave=False, disable=True if desc is None else None)
        ]
        return torch.cat(chunks)

    def unit_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> float in [0, 1], in the autoencoder's memory format."""
        return to_unit(frames, self.hparams.channels_last)

    def latents(self, batch: Batch, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context latents (B, K, Z) and target latent (B, Z; None without a target frame), from the cache
        or by encoding."""
        table = self._latent_table(split)
        if table is not None:
            z = table[batch["frame_index"].to(table.device)]  # (B, K + 1, Z)
            return z[:, :-1], z[:, -1]
        b, k = batch["context_frames"].shape[:2]
        frames = [batch["context_frames"].flatten(0, 1)] + ([batch["target_frame"]] if "target_frame" in batch else [])
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.freeze_ae):
            z = self.autoencoder.encode(self.unit_frames(torch.cat(frames))).float()  # (B*K [+ B], Z)
        return z[: b * k].view(b, k, -1), (z[b * k :].detach() if "target_frame" in batch else None)

    # ---- forward and steps -----------------------------------------------------------------------

    def encode_context(self, batch: Batch, z_context: torch.Tensor) -> StoryEncoding:
        """The story model over the context; frames that overlapping windows share are encoded once
        when the batch names its frames (`frame_index`, as the datamodule's batches do)."""
        frame_ids = batch["frame_index"][:, :-1] if "frame_index" in batch else None
        return self.story.encode(z_context, batch["context_captions"], batch["context_lengths"], frame_ids)

    def forward(self, batch: Batch, split: str = "predict", generate: bool = True) -> Prediction:
        """The one path from a batch to predictions: encode the context, decode the next frame and, with
        `generate`, write the next caption as `self.decoding` asks (greedy, or e.g. a beam in evaluation)."""
        z_context, z_target = self.latents(batch, split)
        enc = self.encode_context(batch, z_context)
        prediction = Prediction(enc, self.autoencoder.decode(enc.latent).float(), z_target)
        if generate:
            with torch.no_grad():
                prediction.caption_ids = decode_captions(self.story, enc, **self.decoding)
            prediction.captions = self.decode(prediction.caption_ids)
        return prediction

    def _step(self, batch: Batch, split: str, generate: bool | None = None) -> tuple[torch.Tensor, Prediction]:
        """Loss and metrics of a batch; captions are generated (`generate`, default: outside training) for
        the free-running caption metrics."""
        prediction = self(batch, split, generate=split != "train" if generate is None else generate)
        target = to_unit(batch["target_frame"])  # (B, 3, H, W)
        caption = batch["target_caption"]  # (B, L)
        if split == "train":  # no (B, L, V) logits: the projection fused with the loss, on the tokens only
            ce = self.story.caption_loss(prediction.encoding, caption, self.hparams.caption_focal_gamma)
        else:  # per token, which perplexity sums too: one log-softmax over (N, V) instead of two
            logits = self.story.token_logits(prediction.encoding, caption).float()  # (N, V) at the N tokens
            token_nll = F.cross_entropy(logits, caption[caption != PAD_ID], reduction="none")
            ce = token_nll.sum() / max(len(token_nll), 1)
        terms = {
            "ce": ce,
            "img": F.l1_loss(prediction.image, target),
            "lat": F.mse_loss(prediction.encoding.latent.float(), prediction.target_latent),
        }
        if self.hparams.loss_weights.get("region") and ("regions" in batch or split == "train"):
            terms["region"] = self._region_loss(prediction.encoding, batch)  # evaluating elsewhere: not scored
        loss = weighted_loss(terms, self.hparams.loss_weights, self.global_step)
        on_step, bs = split == "train", len(target)
        sync = not on_step  # val/test: the mean over every DDP rank's batches
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=sync)
        self.log_dict({f"{split}/loss_{k}": v for k, v in terms.items()}, on_step=on_step, on_epoch=True,
                      batch_size=bs, sync_dist=sync)
        if split != "train":
            self._update_metrics(split, batch, prediction, logits, token_nll, target)
        return loss, prediction

    def _region_loss(self, enc: StoryEncoding, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the region head at every map cell the decoder reads, against the world's labels
        of the last context frame and the target (`batch["regions"]`, `SyntheticWorld.regions`). Training
        needs the labels; a model so trained is evaluated anywhere (without labels the term is left out)."""
        if "regions" not in batch:
            raise ConfigError("model.loss_weights.region > 0 needs a source that knows where its objects are "
                              "(data=synthetic or data=prose); this one gives no region labels")
        logits = enc.region_logits  # (B, M, h*w, classes)
        labels = batch["regions"].flatten(2)  # (B, M, g*g)
        if labels.shape != logits.shape[:-1]:
            raise ConfigError(f"model.loss_weights.region: the data's {tuple(batch['regions'].shape[-2:])} region "
                              f"grid does not match the latent map's {tuple(self.autoencoder.latent_shape[1:])} cells")
        return F.cross_entropy(logits.flatten(0, 2).float(), labels.flatten())

    @torch.no_grad()
    def _update_metrics(self, split: str, batch: Batch, prediction: Prediction, logits: torch.Tensor,
                        token_nll: torch.Tensor, target: torch.Tensor) -> None:
        m, bs = self.metrics[split], len(target)
        reference = batch["target_caption"]
        update_images(m["image"], prediction.image, target)
        tokens = reference[reference != PAD_ID]  # (N,) the rows of `logits`
        m["token_acc"].update(argmax_last(logits), tokens)
        m["perplexity"].update(logits, tokens, nll=token_nll)
        reference_text = self.reference_text(batch, split)
        scored: tuple[str, ...] = ("image",)
        if prediction.caption_ids is not None:
            self._score_captions(m["caption"], prediction.caption_ids, reference, prediction.captions, reference_text)
            scored += ("caption",)
        if split not in self._baselines:  # the weights being trained change none of them
            context = to_unit(batch["context_frames"])  # (B, K, 3, H, W)
            update_images(m["copy_last_frame"], context[:, -1], target)
            update_images(m["mean_context"], context.mean(dim=1), target)
            update_images(m["ae_ceiling"], self.autoencoder.decode(prediction.target_latent), target)
            last = batch["context_captions"][:, -1]
            last_text = self.reference_text(batch, split, position=-2)
            self._score_captions(m["copy_last_caption"], last, reference, last_text, reference_text)
            scored += BASELINES
            if "oracle_frame" in batch:  # decoded through the autoencoder, as the model's frame is
                oracle = self.autoencoder.decode(self.autoencoder.encode(self.unit_frames(batch["oracle_frame"])))
                update_images(m["oracle_frame"], oracle, target)
                oracle_text = self.reference_text(batch, split, oracle=True)
                self._score_captions(m["oracle_caption"], batch["oracle_caption"], reference, oracle_text, reference_text)
                scored += ORACLES
        self.log(f"{split}/token_acc", m["token_acc"], on_epoch=True, batch_size=bs)
        self.log(f"{split}/perplexity", m["perplexity"], on_epoch=True, batch_size=bs)
        for key in scored:
            self.log_dict(m[key], on_epoch=True, batch_size=bs)

    def _score_captions(self, metrics: MetricCollection, generated: torch.Tensor, reference: torch.Tensor,
                        generated_text: list[str], reference_text: list[str]) -> None:
        """`update_captions`, timed: the seconds are reported at the end of a test pass."""
        started = time.perf_counter()
        update_captions(metrics, generated, reference, generated_text, reference_text)
        self._caption_seconds += time.perf_counter() - started

    def on_validation_epoch_start(self) -> None:
        self._caption_seconds = 0.0
        self._val_windows_generated = 0

    on_test_epoch_start = on_validation_epoch_start

    def _val_generates(self, windows: int) -> bool:
        """Whether this validation batch of `windows` gets free-running captions. Inside a fit: in every
        `val_caption_every_n_epochs`-th epoch and the last, on the first `val_caption_windows` windows of the
        split (whole batches; the split's order is fixed, so they are the same windows every time). A
        validation of its own (`Trainer.validate`: stage=evaluate eval.split=val, a run's final metrics)
        captions every window."""
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return True
        every, subset = self.hparams.val_caption_every_n_epochs, self.hparams.val_caption_windows
        epoch = self.current_epoch
        last = self._trainer is not None and self.trainer.max_epochs is not None and epoch + 1 >= self.trainer.max_epochs
        if (epoch + 1) % every and not last:
            return False
        if subset is not None and self._val_windows_generated >= subset:
            return False
        self._val_windows_generated += windows
        return True

    def on_test_epoch_end(self) -> None:
        log.info("caption metrics (the model's and the caption baselines'): %.1f s of this test pass", self._caption_seconds)

    def on_validation_epoch_end(self) -> None:
        """With a frozen autoencoder the baselines are scored on the first whole validation and logged
        again from then on: they depend on the data and that autoencoder only, and their SSIMs cost a
        quarter of a pass. A fine-tuned autoencoder changes ae_ceiling, so they are scored every time."""
        if self.trainer.sanity_checking or not self.hparams.freeze_ae:
            return
        if "val" in self._baselines:
            self.log_dict(self._baselines["val"], on_epoch=True)
        else:
            m = self.metrics["val"]
            scored = [key for key in BASELINES + ORACLES if any(metric.update_called for metric in m[key].values())]
            self._baselines["val"] = {k: v for key in scored for k, v in m[key].compute().items()}

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """(B, L) ids -> B caption strings."""
        return [self.tokenizer.decode(row) for row in tokens.tolist()]

    def reference_text(self, batch: Batch, split: str, position: int = -1, oracle: bool = False) -> list[str]:
        """The captions of the window frames at `position` (-1: the target; with `oracle`, the target's
        oracle) as the data holds them, whole and normalised: text metrics score against these, so they do
        not depend on the tokenizer, its <unk>s or the caption length. Without the datamodule's frame ids,
        the decoded ids."""
        kind = "oracle_references" if oracle else "references"
        references = getattr(getattr(self._trainer, "datamodule", None), kind, {}).get(split)
        if references is None or "frame_index" not in batch:
            ids = batch["oracle_caption"] if oracle else (
                batch["target_caption"] if position == -1 else batch["context_captions"][:, position + 1])
            return self.decode(ids)
        return [references[i] for i in batch["frame_index"][:, position].tolist()]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> Prediction:
        """Teacher-forced metrics on every batch; free-running captions on the fixed subset `_val_generates` picks."""
        return self._step(batch, "val", generate=self._val_generates(len(batch["target_caption"])))[1]

    def test_step(self, batch: Batch, batch_idx: int) -> Prediction:
        """The step's predictions reach `on_test_batch_end` of every callback (evaluate's report reads them)."""
        return self._step(batch, "test")[1]

    @torch.no_grad()
    def samples(self, batch: Batch, split: str = "samples") -> tuple[list[torch.Tensor], list[str]]:
        """Image rows `context .. | target | prediction` and `reference / generated` caption lines."""
        prediction = self(batch, split)
        context = to_unit(batch["context_frames"])
        target = to_unit(batch["target_frame"])
        rows = [torch.cat([c, t[None], p[None].clamp(0, 1)]) for c, t, p in zip(context, target, prediction.image)]
        reference = self.reference_text(batch, split)
        lines = [f"reference: {r}\ngenerated: {g}" for r, g in zip(reference, prediction.captions)]
        return rows, lines
