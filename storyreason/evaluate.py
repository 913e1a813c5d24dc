"""`stage=evaluate`: score a checkpoint of either stage on one split and write what people look at.

The metrics come from the same Lightning test (or validation) loop training ends with, so a
checkpoint evaluated on its training data reproduces its run's metrics.json. Into its own run
directory it writes:
  metrics.json   the split's metrics, keys as in training
  report.md      the model beside every baseline for every metric, the grids, the loss curves
  grids/         PNG grids `context .. | target | prediction` of stories chosen evenly over the split
  captions.tsv   story id, target frame (0-based, in the story), reference, generated and copy-last caption
                 of every window; references are the data's captions, whole
  curves/        loss curves from the training run's TensorBoard events or CSV log (when it has one)
"""

from __future__ import annotations

import csv
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FormatStrFormatter, NullFormatter
from omegaconf import DictConfig, OmegaConf, open_dict

from storyreason.checkpoints import AE_STAGE, STORY_STAGE, module_from_checkpoint, resolve_checkpoint
from storyreason.data.datamodule import StoryDataModule
from storyreason.errors import ConfigError
from storyreason.history import Scalar, read_scalars
from storyreason.memory import keep_freed_memory
from storyreason.modules.base import to_unit
from storyreason.modules.multimodal import Prediction
from storyreason.report import markdown_table, print_table, results_table, write_json_atomic
from storyreason.rundir import RunDir

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def checkpoint_datamodule(cfg: DictConfig, hparams: dict[str, Any]) -> StoryDataModule:
    """The configured data source, read as the checkpoint was trained: its tokenizer, image size,
    context length and caption length replace the data config's."""
    stage = hparams["stage"]
    settings = {
        "image_size": hparams["autoencoder"]["image_size"],
        "item": "frames" if stage == AE_STAGE else "windows",
    }
    if stage == STORY_STAGE:
        settings |= {"context": hparams["context"], "max_caption_len": hparams["max_caption_len"]}
    with open_dict(cfg):
        for key, value in settings.items():
            if cfg.data.get(key) != value:
                log.info("data.%s=%s from the checkpoint (the config had %s)", key, value, cfg.data.get(key))
            cfg.data[key] = value
    tokenizer_state = hparams.get("tokenizer_state") if stage == STORY_STAGE else None
    return instantiate(cfg.data, tokenizer_state=tokenizer_state, _convert_="all")


def grid_windows(story_ids: list[str], count: int) -> list[int]:
    """Indices of the first window of `count` stories spread evenly over the split (deterministic)."""
    first: dict[str, int] = {}
    for index, story in enumerate(story_ids):
        first.setdefault(story, index)
    stories = list(first)
    if not stories or count < 1:
        return []
    picks = np.unique(np.linspace(0, len(stories) - 1, num=min(count, len(stories))).round().astype(int))
    return [first[stories[p]] for p in picks]


@dataclass
class GridRow:
    """One story of a grid: images (3, H, W) in [0, 1] and the text under each."""

    story_id: str
    images: list[torch.Tensor]
    texts: list[str]


class Recorder(L.Callback):
    """Keeps what the evaluation loop scored: every window's captions and the images of the grid windows.
    A stage-2 step returns its predictions (`Prediction`), so nothing runs the model a second time and
    captions.tsv shows exactly the captions that were scored."""

    def __init__(self, split: str, story_ids: list[str], picked: set[int], frame_numbers: list[int] | None = None) -> None:
        self.split, self.story_ids, self.picked = split, story_ids, picked
        self.frame_numbers = frame_numbers or [0] * len(story_ids)
        self.captions: list[tuple[str, int, str, str, str]] = []  # story, target frame, reference, generated, copy-last
        self.rows: dict[int, GridRow] = {}
        self.seen = 0  # windows (or frames) recorded so far: batches come in dataset order

    @torch.no_grad()
    def record(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        """Captions of every window of `batch` and the grid rows among them."""
        first = self.seen
        self.seen += len(next(iter(batch.values())))
        picked = [i for i in range(first, self.seen) if i in self.picked]
        if isinstance(outputs, Prediction):
            reference = module.reference_text(batch, self.split)
            last = module.reference_text(batch, self.split, position=-2)
            self.captions += zip(self.story_ids[first : self.seen], self.frame_numbers[first : self.seen], reference,
                                 outputs.captions, last)
            for i in picked:
                j = i - first
                context = to_unit(batch["context_frames"][j]).cpu()  # (K, 3, H, W)
                images = [*context, to_unit(batch["target_frame"][j]).cpu(), outputs.image[j].clamp(0, 1).cpu()]
                texts = [*module.decode(batch["context_captions"][j]), reference[j], outputs.captions[j]]
                self.rows[i] = GridRow(self.story_ids[i], images, texts)
        elif picked:
            frames = module.frames(batch)
            with trainer.precision_plugin.forward_context():
                recon = module.autoencoder(frames[[i - first for i in picked]]).float().clamp(0, 1)
            for i, image in zip(picked, recon):
                self.rows[i] = GridRow(self.story_ids[i], [frames[i - first].float().cpu(), image.cpu()], ["", ""])

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(trainer, pl_module, outputs, batch)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(trainer, pl_module, outputs, batch)


def wrap(text: str, width: int = 26, lines: int = 4) -> str:
    """At most `lines` lines of `width` characters, '…' where the text goes on."""
    wrapped = textwrap.wrap(text, width)
    return "\n".join(wrapped[: lines - 1] + [wrapped[lines - 1] + " …"] if len(wrapped) > lines else wrapped)


def draw_grid(rows: list[GridRow], columns: list[str], path: Path) -> None:
    """One story per row, a titled column per frame, each frame's caption under it; the last column framed.

    The frames are pasted into one mosaic and drawn with a single `imshow` (a matplotlib Axes per
    frame made a grid take seconds to lay out); the text goes on top at pixel positions.
    """
    size = rows[0].images[0].shape[-1]
    gap, below = size // 8, size // 2  # pixels between frames, and for the captions under them
    cell_w, cell_h = size + gap, size + below
    mosaic = np.ones((len(rows) * cell_h, len(columns) * cell_w, 3), np.float32)
    for r, row in enumerate(rows):
        for c, image in enumerate(row.images):
            y, x = r * cell_h, c * cell_w
            mosaic[y : y + size, x : x + size] = image.permute(1, 2, 0).numpy()
    inch = 1.7 / size  # a frame is 1.7 inches wide
    left, top = 0.3, 0.25  # margins for the story ids and the column titles, inches
    width, height = mosaic.shape[1] * inch, mosaic.shape[0] * inch
    fig = Figure(figsize=(left + width, top + height))
    ax = fig.add_axes((left / (left + width), 0, width / (left + width), height / (top + height)))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto", extent=(0, mosaic.shape[1], mosaic.shape[0], 0))
    ax.set_axis_off()
    last = (len(columns) - 1) * cell_w
    for c, title in enumerate(columns):
        ax.text(c * cell_w + size / 2, -1, title, ha="center", va="bottom", fontsize=8)
    for r, row in enumerate(rows):
        y = r * cell_h
        ax.text(-1, y + size / 2, row.story_id, ha="right", va="center", rotation=90, fontsize=7)
        ax.add_patch(Rectangle((last - 0.5, y - 0.5), size, size, fill=False, edgecolor="tab:blue", linewidth=2))
        for c, text in enumerate(row.texts):
            ax.text(c * cell_w + size / 2, y + size + 1, wrap(text), ha="center", va="top", fontsize=6)
    fig.savefig(path, dpi=90)


def write_grids(recorder: Recorder, columns: list[str], out: Path, per_grid: int) -> list[Path]:
    """grids/grid_00.png, ... with up to `per_grid` stories each."""
    rows = [recorder.rows[i] for i in sorted(recorder.rows)]
    paths = []
    for g in range(0, len(rows), max(per_grid, 1)):
        path = out / "grids" / f"grid_{len(paths):02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_grid(rows[g : g + per_grid], columns, path)
        paths.append(path)
    return paths


def write_captions(recorder: Recorder, path: Path) -> None:
    """captions.tsv: one line per window, with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["story_id", "target_frame", "reference", "generated", "copy_last_caption"])
        writer.writerows(recorder.captions)


def write_loss_curves(scalars: dict[str, list[Scalar]], out: Path) -> list[Path]:
    """curves/losses.png, a panel per loss term (`loss`, `loss_ce`, ...): train per step and epoch mean, val.

    Only what fitting wrote is drawn: the evaluation of the best checkpoint after it (and the
    hyperparameter summary) logs the final val values again, later and at other steps.
    """
    tags = [t for t in scalars if t.partition("/")[0] in ("train", "val") and "/loss" in t]
    fit_end = max((s.order for t in tags if t.startswith("train/") for s in scalars[t]), default=None)
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for tag in tags:
        split, _, name = tag.partition("/")
        term, kind = name, ""
        for suffix, label in (("_step", " per step"), ("_epoch", " epoch mean")):
            if name.endswith(suffix):
                term, kind = name.removesuffix(suffix), label
        kept = [s for s in scalars[tag] if fit_end is None or s.order <= fit_end]
        curves.setdefault(term, {})[split + kind] = ([s.step for s in kept], [s.value for s in kept])
    if not curves:
        return []
    ncols = min(len(curves), 2)
    nrows = -(-len(curves) // ncols)
    fig = Figure(figsize=(5 * ncols, 3.2 * nrows))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14 / nrows, top=1 - 0.1 / nrows, wspace=0.22, hspace=0.45)
    for ax, (term, series) in zip(fig.subplots(nrows, ncols, squeeze=False).flat, sorted(curves.items())):
        for label, (steps, values) in sorted(series.items()):
            per_step = label.endswith("per step")
            style = {"linewidth": 0.8} if per_step else {"linewidth": 1.6, "marker": "o", "markersize": 3}
            ax.plot(steps, values, label=label, **style)
        seen = [v for _, vs in series.values() for v in vs]
        if seen and min(seen) > 0 and max(seen) > 10 * min(seen):  # a log axis once it spans a decade
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # plain numbers: no mathtext to typeset
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("step")
        ax.set_title(term)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = out / "curves" / "losses.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return [path]


def data_differences(cfg: DictConfig, run: RunDir | None) -> list[str] | None:
    """The `data.source` keys whose values differ from the training run's saved config, each as
    "key: here vs trained" ([] when the same; None where the run's config is missing or unreadable)."""
    if run is None or not run.config.is_file():
        return None
    try:
        trained = OmegaConf.to_container(OmegaConf.load(run.config).data.source, resolve=True)
        given = OmegaConf.to_container(cfg.data.source, resolve=True)
    except Exception:  # a saved config this version cannot resolve says nothing either way
        return None
    return [f"data.source.{key}: {given.get(key)!r} here vs {trained.get(key)!r} in training"
            for key in sorted(set(trained) | set(given)) if trained.get(key) != given.get(key)]


def write_report(path: Path, cfg: DictConfig, ckpt: Path, info: dict[str, Any], metrics: dict[str, float],
                 grids: list[Path], curves: list[Path], captions: list[tuple[str, int, str, str, str]]) -> None:
    """report.md: what was evaluated, the table, the grids, a few captions and the loss curves."""
    split, out = cfg.eval.split, path.parent
    decoding = "greedy" if cfg.eval.beam_size == 1 else f"beam search, beam {cfg.eval.beam_size}"
    lines = [
        f"# Evaluation of `{ckpt}`",
        "",
        f"- checkpoint: stage `{info['stage']}`, epoch {info['epoch']}, step {info['step']}",
        f"- data: `{cfg.data.source._target_.rsplit('.', 1)[-1]}`, split `{split}`, {info['items']} {info['unit']}"
        + {True: " (the training run's data settings)", False: " (**not** the training run's data settings)",
           None: ""}[info["same_data"]],
    ]
    if info["stage"] == STORY_STAGE:
        lines += [
            f"- caption decoding: {decoding}, at most {info['max_len']} tokens",
            f"- caption tokens: {info['tokenizer']} tokenizer, {info['vocab_size']} entries. Token accuracy (forced and"
            " free) and perplexity count these tokens; BLEU (sacrebleu 13a tokens), chrF and ROUGE-L score the"
            " detokenised text against the data's whole captions, so they compare across tokenizers",
        ]
    lines += ["", f"## Model and baselines ({split})", "", markdown_table(*results_table(metrics, split)), ""]
    if info["stage"] == STORY_STAGE:
        lines += [
            "↑ higher is better, ↓ lower is better. copy_last_frame and mean_context predict the last context",
            "frame and the mean of the context frames; copy_last_caption repeats the last context caption;",
            "ae_ceiling is the autoencoder's reconstruction of the true next frame, the best image a model that",
            "decodes through this autoencoder can reach. oracle_frame and oracle_caption (the built-in world",
            "only) are the next frame (through the autoencoder) and caption of the world's deterministic",
            "dynamics without its random events (appear, leave, recolour): what is achievable from the context.",
            "A skill is (copy - model) / (copy - ceiling): 0 is copying the last context frame or caption, 1 the",
            "ceiling; n/a where the ceiling is no better than the copy. Teacher-forced metrics need token",
            "probabilities, which only the model has.",
            "",
        ]
    if grids:
        columns = "context frames | target | prediction" if info["stage"] == STORY_STAGE else "frame | reconstruction"
        lines += ["## Samples", "", f"Rows: {columns} (framed in blue).", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in grids] + [""]
    if captions:
        shown = captions[: min(len(captions), 8)]
        header = ["story", "frame", "reference", "generated", "copy last caption"]
        lines += ["## Captions", "", f"The first {len(shown)} of {len(captions)} windows; all are in `captions.tsv`.",
                  "", markdown_table(header, [list(c) for c in shown], numbers=False), ""]
    lines += ["## Loss curves", ""]
    if curves:
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in curves]
    else:
        lines += ["No logged losses next to the checkpoint (`<run>/tensorboard/` or `<run>/csv/metrics.csv`), so no curves."]
    path.write_text("\n".join(lines) + "\n")


def evaluate(cfg: DictConfig) -> float | None:
    """Score `cfg.ckpt_path` on `cfg.eval.split` of the configured data and write the report files."""
    keep_freed_memory()
    split = cfg.eval.split
    if split not in SPLITS:
        raise ConfigError(f"eval.split must be one of {SPLITS}, got {split!r}")
    ckpt = resolve_checkpoint(OmegaConf.select(cfg, "ckpt_path", throw_on_missing=False))
    module, checkpoint = module_from_checkpoint(ckpt)
    hparams = checkpoint["hyper_parameters"]
    stage = hparams["stage"]
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir.of_checkpoint(ckpt)
    differences = data_differences(cfg, run)
    if differences:
        log.warning("the data differ from those %s was trained with (%s): its metrics will not match the run's; "
                    "pass the run's data options (its .hydra/config.yaml) to score it as trained", ckpt,
                    "; ".join(differences))
    datamodule = checkpoint_datamodule(cfg, hparams)
    datamodule.prepare_data()
    datamodule.setup("test")
    story_ids = datamodule.story_ids(split)
    if stage == STORY_STAGE:
        module.decoding = {k: cfg.eval[k] for k in ("beam_size", "max_len", "length_penalty")}
    frame_numbers = datamodule.target_frames(split).tolist() if stage == STORY_STAGE else None
    recorder = Recorder(split, story_ids, set(grid_windows(story_ids, cfg.eval.num_stories)), frame_numbers)
    progress = [instantiate(c) for c in cfg.get("callbacks", {}).values() if "ProgressBar" in c.get("_target_", "")]
    trainer: L.Trainer = instantiate(
        cfg.trainer, devices=1, num_nodes=1, strategy="auto", callbacks=[recorder, *progress], logger=False,
        enable_checkpointing=False,
    )
    loop = trainer.validate if split == "val" else trainer.test
    metrics = {k: float(v) for result in loop(module, datamodule=datamodule, verbose=False) for k, v in result.items()}
    write_json_atomic(RunDir(out).metrics, metrics)

    columns = ["frame", "reconstruction"]
    if stage == STORY_STAGE:
        columns = [*(f"context {i + 1}" for i in range(hparams["context"])), "target", "prediction"]
    grids = write_grids(recorder, columns, out, cfg.eval.grid_rows)
    if stage == STORY_STAGE:
        write_captions(recorder, out / "captions.tsv")
    logs = (run.path / "tensorboard", run.path / "csv" / "metrics.csv") if run else None
    curves = write_loss_curves(read_scalars(*logs), out) if logs else []
    info = {
        "stage": stage, "epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step"),
        "items": len(story_ids), "unit": "windows" if stage == STORY_STAGE else "frames",
        "same_data": None if differences is None else not differences,
        "max_len": cfg.eval.max_len or hparams.get("max_caption_len"),
    }
    if stage == STORY_STAGE:
        info |= {"tokenizer": module.tokenizer.kind, "vocab_size": len(module.tokenizer)}
    write_report(out / "report.md", cfg, ckpt, info, metrics, grids, curves, recorder.captions)
    print_table(metrics, split, title=f"{stage} checkpoint, {split} split")
    log.info("report: %s", out / "report.md")
    return metrics.get(cfg.optimized_metric) if cfg.get("optimized_metric") else None
