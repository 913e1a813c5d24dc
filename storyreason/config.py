"""Checks of a composed config that must fail in a second, before any data or training work starts.

`SCHEMA` is the one table of what each known key accepts (its type, range or choices), checked by
`check_types` against the composed config wherever the key appears. Keys it does not name pass,
so a new key in a data or model config needs no schema change; add a line here to have it checked.
`validate` then checks what depends on several keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from storyreason.errors import ConfigError


class Rule:
    """What one key accepts; `text` says it in the error message. `a | b` accepts what either accepts."""

    def __init__(self, test: Callable[[Any], bool], text: str) -> None:
        self.test, self.text = test, text

    def __or__(self, other: Rule) -> Rule:
        return Rule(lambda v: self.test(v) or other.test(v), f"{self.text} or {other.text}")


def _bounds(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable, str]:
    def within(v: float) -> bool:
        return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))

    if lo is not None and hi is not None:
        return within, f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return within, f" {'>' if lo_open else '>='} {lo}"
    return within, f" {'<' if hi_open else '<='} {hi}" if hi is not None else ""


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    """An int (not a bool, not 1.5 or 2.0) within [lo, hi]."""
    within, text = _bounds(lo, hi)
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and within(v), f"an integer{text}")


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """An int or float (not a bool) within the bounds."""
    within, text = _bounds(lo, hi, lo_open, hi_open)
    return Rule(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and within(v), f"a number{text}")


def choice(*options: Any) -> Rule:
    return Rule(lambda v: not isinstance(v, bool) and v in options, "one of " + ", ".join(map(str, options)))


def list_of(rule: Rule) -> Rule:
    return Rule(lambda v: isinstance(v, list) and all(rule.test(x) for x in v), f"a list, each item {rule.text}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
NULL = Rule(lambda v: v is None, "null")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PATH = Rule(lambda v: isinstance(v, str) and v != "", "a path")
FRACTION_OR_COUNT = number(0, 1) | integer(0)  # Lightning's limit_*_batches: a share of the batches, or a count

SCHEMA: dict[str, Rule] = {
    "seed": integer(),
    "resume": PATH | NULL,
    "ckpt_path": PATH | NULL,
    "optimized_metric": TEXT | NULL,
    "paths.root": PATH,
    "paths.cache": PATH,
    "stage.name": TEXT,
    "stage.mode": choice("min", "max"),
    # data (every source)
    "data.path": PATH | NULL,
    "data.item": choice("frames", "windows"),
    "data.image_size": integer(1),
    "data.context": integer(1),
    "data.stride": integer(1),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.max_caption_len": integer(2) | choice("auto"),
    "data.num_workers": integer(0),
    "data.pin_memory": BOOL | NULL,
    "data.resident": BOOL | choice("auto"),
    "data.story_batches": BOOL,
    "data.group_by_length": BOOL,
    "data.skip_bad": BOOL,
    "data.tokenizer": choice("word", "bpe"),
    "data.lowercase": BOOL,
    "data.vocab_min_count": integer(1),
    "data.vocab_max_size": integer(1) | NULL,
    "data.caption_coverage": number(0, 1, lo_open=True),
    "data.source.resize": choice("center_crop", "pad", "squash"),
    "data.source.val_fraction": number(0, 1, hi_open=True),
    "data.source.test_fraction": number(0, 1, hi_open=True),
    "data.source.seed": integer(),
    "data.source.decode_workers": integer(1) | NULL,
    "data.source.name": TEXT,
    "data.source.revision": TEXT | NULL,
    "data.source.hf_cache_dir": PATH | NULL,
    # the built-in story world
    "data.source.num_stories.*": integer(1),
    "data.source.story_length": integer(2),
    "data.source.max_objects": integer(1),
    "data.source.radius": list_of(integer(1)),
    "data.source.speed": list_of(number(0)),
    "data.source.p_*": number(0, 1),
    "data.source.captions": choice("list", "prose"),
    # model (both stages)
    "model.lr": number(0, lo_open=True),
    "model.lr_reference_width": integer(1) | NULL,
    "model.weight_decay": number(0),
    "model.mse_weight": number(0),
    "model.scheduler": choice("cosine", "none"),
    "model.warmup_steps": integer(0),
    "model.min_lr_ratio": number(0, 1),
    "model.channels_last": BOOL,
    "model.compile": BOOL,
    "model.autoencoder.image_size": integer(1),
    "model.autoencoder.channels": list_of(integer(1)),
    "model.autoencoder.latent_dim": integer(1),
    "model.autoencoder.bottleneck": choice("spatial", "fc"),
    "model.story.bidirectional": BOOL,
    "model.story.motion_cells": BOOL,
    "model.story.caption_memory.hops": integer(1),
    "model.story.caption_memory.context_bias": BOOL,
    "model.story.*": integer(1),
    "model.context": integer(1),
    "model.max_caption_len": integer(2) | choice("auto"),
    "model.ae_ckpt": PATH | NULL,
    "model.freeze_ae": BOOL,
    "model.cache_latents": BOOL,
    "model.val_caption_windows": integer(1) | NULL,
    "model.val_caption_every_n_epochs": integer(1),
    "model.loss_weights.*": number(0),
    # Lightning Trainer flags (conf/trainer/cpu.yaml lists them all; the others Lightning checks itself)
    "trainer.max_epochs": integer(-1) | NULL,
    "trainer.min_epochs": integer(0) | NULL,
    "trainer.max_steps": integer(-1),
    "trainer.min_steps": integer(0) | NULL,
    "trainer.limit_*_batches": FRACTION_OR_COUNT | NULL,
    "trainer.overfit_batches": FRACTION_OR_COUNT,
    "trainer.val_check_interval": FRACTION_OR_COUNT | NULL,
    "trainer.check_val_every_n_epoch": integer(1) | NULL,
    "trainer.num_sanity_val_steps": integer(-1) | NULL,
    "trainer.log_every_n_steps": integer(1) | NULL,
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": number(0) | NULL,
    "trainer.gradient_clip_algorithm": choice("norm", "value") | NULL,
    "trainer.num_nodes": integer(1),
    "trainer.fast_dev_run": BOOL | integer(0),
    "trainer.precision": choice("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
                                "transformer-engine", "transformer-engine-float16", 64, 32, 16, "64", "32", "16", "bf16"),
    "trainer.deterministic": BOOL | choice("warn") | NULL,
    "trainer.benchmark": BOOL | NULL,
    "trainer.enable_*": BOOL | NULL,
    "trainer.inference_mode": BOOL,
    "trainer.use_distributed_sampler": BOOL,
    "trainer.detect_anomaly": BOOL,
    "trainer.barebones": BOOL,
    "trainer.sync_batchnorm": BOOL,
    "trainer.reload_dataloaders_every_n_epochs": integer(0),
    # callbacks
    "callbacks.last_checkpoint.every_n_train_steps": integer(1),
    "callbacks.samples.num_samples": integer(0),
    "callbacks.samples.num_grids": integer(0),
    "callbacks.progress_bar.refresh_rate": integer(0),
    "callbacks.divergence.factor": number(1, lo_open=True),
    "callbacks.divergence.patience": integer(1),
    "callbacks.divergence.stop": BOOL,
    # stage=evaluate, stage=predict
    "eval.split": choice("val", "test"),
    "eval.beam_size": integer(1),
    "eval.max_len": integer(1) | NULL,
    "eval.length_penalty": number(),
    "eval.num_stories": integer(1),
    "eval.grid_rows": integer(1),
    "predict.input": PATH | NULL,
    "predict.output": PATH | NULL,
    "predict.beam_size": integer(1),
    "predict.max_len": integer(1) | NULL,
    "predict.length_penalty": number(),
    "predict.upscale": integer(1),
}


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Flat `a.b.c -> raw value` view of a plain container; lists are leaves."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def rule_for(key: str) -> Rule | None:
    """The schema's rule for a dotted key (a `*` in the schema stands for one part of the key)."""
    if key in SCHEMA:
        return SCHEMA[key]
    parts = key.split(".")
    for pattern, rule in SCHEMA.items():
        glob = pattern.split(".")
        if "*" in pattern and len(glob) == len(parts) and all(fnmatchcase(p, g) for p, g in zip(parts, glob)):
            return rule
    return None


def _shown(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "a mapping"}
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return f"{value} ({kind.get(type(value), type(value).__name__)})"


def check_types(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first known key whose value has the wrong type or range.

    A mandatory value not given (`???`) is left to the code that needs it, which names what to pass.
    """
    for key, raw in leaves(OmegaConf.to_container(cfg, resolve=False)).items():
        rule = rule_for(key)
        if rule is None or raw == "???":
            continue
        try:
            value = OmegaConf.select(cfg, key)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}={raw}: cannot resolve it ({str(err).splitlines()[0]})") from None
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not rule.test(value):
            raise ConfigError(f"{key}={_shown(value)}: expected {rule.text}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first config mistake found (keys named as on the command line)."""
    check_types(cfg)
    context = _get(cfg, "data.context")
    weights = _get(cfg, "model.loss_weights")
    if weights is not None:
        if not any(weights.values()):
            raise ConfigError("model.loss_weights are all zero: at least one of ce, img, lat must be > 0")
    story = _get(cfg, "model.story")
    if story is not None:
        check_story(story)
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
        spatial = _get(cfg, "model.autoencoder.bottleneck") != "fc"  # fc: any width
        if spatial and latent_dim is not None and latent_dim % cells:
            raise ConfigError(
                f"model.autoencoder.latent_dim={latent_dim} must be a multiple of {cells} "
                f"(the {image_size // factor}x{image_size // factor} bottleneck of data.image_size={image_size})"
            )


def check_story(story: DictConfig) -> None:
    """The story model's options that need one another (model.story.*)."""
    if story.get("bidirectional") and story.get("text_dim", 0) % 2:
        raise ConfigError(f"model.story.bidirectional=true splits model.story.text_dim={story.text_dim} between two "
                          "directions: use an even width")
    if story.get("motion_cells"):
        head = str(OmegaConf.select(story, "latent_head._target_", default=""))
        decoder = str(OmegaConf.select(story, "caption_memory._target_", default=""))
        if not head.endswith(".LatentHead"):
            raise ConfigError(f"model.story.motion_cells=true reads the residual_cnn latent head's hidden map, not "
                              f"{head.rsplit('.', 1)[-1]}'s: use model/story/latent_head=residual_cnn")
        if decoder.endswith(".PlainCaptionDecoder"):
            raise ConfigError("model.story.motion_cells=true needs a caption decoder that reads the map cells: "
                              "use model/story/caption_memory=attention or pointer")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


# groups selected for the user by other choices: recipe/<experiment> by experiment=, ablation= by `make ablations`
INNER_GROUPS = ("recipe", "ablation")


def group_options(conf: Path, group: str) -> list[str]:
    """The options of config group `group` (a folder under `conf`), without files of shared keys (`_common`)."""
    return sorted(p.stem for p in (conf / group).glob("*.yaml") if not p.stem.startswith("_"))


def groups_help(conf: Path) -> str:
    """`group: option, option` lines for `--help`: the groups a user selects, not Hydra's own (`--hydra-help`)
    nor the `INNER_GROUPS` that other choices select."""
    lines = []
    for folder in sorted(d for d in conf.rglob("*") if d.is_dir()):
        group = folder.relative_to(conf).as_posix()
        if group.split("/")[0] in ("hydra", *INNER_GROUPS):
            continue
        if options := group_options(conf, group):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def check_group_choices(overrides: Sequence[str], conf: Path) -> None:
    """Raise ConfigError for a `group=option` override whose option conf/<group>/ does not hold.

    Run on the command line before Hydra composes: Hydra's own error for it is several lines and exit 1.
    """
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+~").split("@")[0]
        if override.startswith("-") or not sep or group.startswith("hydra") or not (conf / group).is_dir():
            continue
        if value in ("", "null") or "(" in value:  # a removed group, or a sweep function such as choice(...)
            continue
        options = group_options(conf, group)
        for option in value.split(","):
            if option not in options:
                raise ConfigError(f"{group}={option}: no such option; choose one of {', '.join(options)} (conf/{group}/)")


def null_groups_removed(overrides: Sequence[str], conf: Path) -> list[str]:
    """`group=null` (say `logger=null`) as `~group`: Hydra refuses null for a group its defaults list selects,
    and removing the group is what a user who writes it means."""
    return [f"~{o.split('=', 1)[0]}" if o.endswith("=null") and "." not in o.split("=", 1)[0]
            and (conf / o.split("=", 1)[0]).is_dir() else o for o in overrides]
