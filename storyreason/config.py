"""Checks of a composed config that must fail in a second, before any data or training work starts."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key and what is allowed."""


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first config mistake found (keys named as on the command line)."""
    context, batch_size, lr = _get(cfg, "data.context"), _get(cfg, "data.batch_size"), _get(cfg, "model.lr")
    if context is not None and context < 1:
        raise ConfigError(f"data.context={context}: it must be >= 1 (the number of context frames)")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size}: it must be >= 1")
    if lr is not None and lr <= 0:
        raise ConfigError(f"model.lr={lr}: the learning rate must be > 0")
    weights = _get(cfg, "model.loss_weights")
    if weights is not None:
        if any(w < 0 for w in weights.values()):
            raise ConfigError(f"model.loss_weights={dict(weights)}: weights must be >= 0")
        if not any(weights.values()):
            raise ConfigError("model.loss_weights are all zero: at least one of ce, img, lat must be > 0")
    story_length = _get(cfg, "data.source.story_length")
    if story_length is not None and context is not None and story_length < context + 1:
        raise ConfigError(
            f"data.context={context} needs stories of at least {context + 1} frames, but "
            f"data.source.story_length={story_length}: lower data.context or raise the story length"
        )
    image_size, channels = _get(cfg, "data.image_size"), _get(cfg, "model.autoencoder.channels")
    if image_size is not None and channels is not None:
        factor = 2 ** len(channels)
        if image_size < factor or image_size % factor:
            raise ConfigError(
                f"data.image_size={image_size} cannot pass the autoencoder's {len(channels)} stride-2 blocks "
                f"(model.autoencoder.channels={list(channels)}): use a multiple of {factor}"
            )
        latent_dim, cells = _get(cfg, "model.autoencoder.latent_dim"), (image_size // factor) ** 2
        if latent_dim is not None and latent_dim % cells:
            raise ConfigError(
                f"model.autoencoder.latent_dim={latent_dim} must be a multiple of {cells} "
                f"(the {image_size // factor}x{image_size // factor} bottleneck of data.image_size={image_size})"
            )
