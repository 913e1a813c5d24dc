"""`stage=predict`: the next frame and caption of a user's own story, from a stage-2 checkpoint alone.

The story folder holds K frame images (any size and format Pillow reads, natural name order) and
captions.txt with one caption per frame. Frames are center-cropped and resized to the checkpoint's
image size, as the file-based data sources do. Bad input stops with one line naming the culprit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from storyreason.checkpoints import STORY_STAGE, CheckpointError, module_from_checkpoint, resolve_checkpoint
from storyreason.data.errors import DataError
from storyreason.data.images import IMAGE_SUFFIXES, decode_frame
from storyreason.data.sources.folder import natural_key
from storyreason.data.tokenizer import UNK
from storyreason.modules.multimodal import MultimodalStoryModule

log = logging.getLogger(__name__)
CAPTIONS = "captions.txt"


def read_story(folder: str | Path | None, context: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """(K, 3, S, S) uint8 frames and K captions of a story folder; a DataError names what is wrong."""
    if folder in (None, ""):
        raise DataError("predict.input is not set: pass predict.input=<folder with the frames and captions.txt>")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"predict.input={folder} is not a folder")
    images = sorted(
        (f for f in folder.iterdir()
         if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")),
        key=natural_key,
    )
    if len(images) != context:
        names = ", ".join(f.name for f in images) or "none"
        raise DataError(
            f"predict.input={folder} has {len(images)} frame images ({names}) but this checkpoint reads "
            f"exactly {context}: put {context} images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder"
        )
    captions_file = folder / CAPTIONS
    if not captions_file.is_file():
        raise DataError(f"{captions_file} is missing: write one caption per frame, one per line, in the frames' order")
    try:
        captions = captions_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{captions_file} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8") from None
    while captions and not captions[-1].strip():
        captions.pop()
    if len(captions) != context:
        raise DataError(f"{captions_file} has {len(captions)} lines for {context} frames: write one caption per frame")
    empty = [k + 1 for k, caption in enumerate(captions) if not caption.strip()]
    if empty:
        log.warning("%s: %d empty caption(s), line(s) %s; they are read as empty text",
                    captions_file, len(empty), ", ".join(map(str, empty)))
    frames = []
    for image in images:
        try:
            frames.append(decode_frame(image, image_size, "center_crop"))
        except Exception as err:  # Pillow raises OSError, SyntaxError or ValueError, by format
            reason = " ".join(str(err).split())
            raise DataError(f"{image} is not a readable image ({type(err).__name__}: {reason})") from None
    return torch.from_numpy(np.stack(frames)), [c.strip() for c in captions]


@torch.no_grad()
def predict_next(module: MultimodalStoryModule, frames: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, str]:
    """Frames (K, 3, S, S) uint8 and K captions -> the next frame (3, S, S) in [0, 1] and its caption."""
    tokens, lengths = module.tokenizer.encode_batch(captions, module.hparams.max_caption_len)
    batch = {"context_frames": frames[None], "context_captions": torch.from_numpy(tokens)[None],
             "context_lengths": torch.from_numpy(lengths)[None]}  # one window without a target: (1, K, ...)
    prediction = module(batch)
    return prediction.image[0].clamp(0, 1), prediction.captions[0]


def to_image(frame: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> an RGB PIL image."""
    return Image.fromarray((frame * 255).round().byte().permute(1, 2, 0).numpy())


def predict(cfg: DictConfig) -> None:
    """Predict from `cfg.predict.input` with `cfg.ckpt_path`; write the frame and caption, print the caption."""
    ckpt = resolve_checkpoint(OmegaConf.select(cfg, "ckpt_path", throw_on_missing=False))
    module, checkpoint = module_from_checkpoint(ckpt)
    hparams = checkpoint["hyper_parameters"]
    if hparams["stage"] != STORY_STAGE:
        raise CheckpointError(
            f"ckpt_path={cfg.ckpt_path} is a {hparams['stage']} (stage 1, autoencoder) checkpoint, but predict needs a "
            f"stage-2 story model: train one with `python train.py stage=multimodal` and pass its run directory"
        )
    module.decoding = {k: cfg.predict[k] for k in ("beam_size", "max_len", "length_penalty")}
    folder = OmegaConf.select(cfg, "predict.input", throw_on_missing=False)
    frames, captions = read_story(folder, hparams["context"], hparams["autoencoder"]["image_size"])
    unknown = module.tokenizer.unknown(captions)
    if unknown:
        log.warning("words this checkpoint never saw in training, read as %s: %s", UNK, " ".join(unknown[:20]))
    image, caption = predict_next(module, frames, captions)
    out = Path(cfg.predict.output or cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = to_image(image)
    frame.save(out / "next_frame.png")
    size = frame.width * cfg.predict.upscale
    frame.resize((size, size), Image.Resampling.NEAREST).save(out / "next_frame_large.png")
    (out / "caption.txt").write_text(caption + "\n", encoding="utf-8")
    log.info("next frame: %s (and next_frame_large.png), caption: %s", out / "next_frame.png", out / "caption.txt")
    print(caption)
