"""Run one stage from a composed config: build data, module, callbacks, logger and trainer; fit; evaluate."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from storyreason.callbacks import DivergenceMonitor
from storyreason.config import check_types, leaves, validate
from storyreason.checkpoints import autoencoder_state, load_checkpoint, resolve_ae_checkpoint
from storyreason.data.datamodule import StoryDataModule
from storyreason.distributed import prepare_data_once
from storyreason.errors import ConfigError
from storyreason.evaluate import evaluate
from storyreason.memory import keep_freed_memory
from storyreason.predict import predict
from storyreason.report import print_table, write_json_atomic
from storyreason.resume import resume_run
from storyreason.rundir import RunDir
from storyreason.sweeps import current_sweep_dir

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, datamodule: StoryDataModule) -> L.LightningModule:
    """The stage's LightningModule; stage 2 gets the fitted caption tokenizer, the caption length and the
    stage-1 autoencoder."""
    if cfg.stage.name == "pretrain_ae":
        return instantiate(cfg.model, _convert_="all")
    ae_path = resolve_ae_checkpoint(cfg.model.ae_ckpt, cfg.paths.root, current_sweep_dir())
    ae_state = autoencoder_state(ae_path, OmegaConf.to_container(cfg.model.autoencoder, resolve=True))
    prepare_data_once(datamodule)  # before the trainer exists: one build per node under DDP
    datamodule.setup("fit")
    module = instantiate(cfg.model, tokenizer_state=datamodule.tokenizer.to_json(),
                         max_caption_len=datamodule.max_caption_len, ae_ckpt=str(ae_path), _convert_="all")
    module.load_autoencoder(ae_state)
    log.info("autoencoder from %s", ae_path)
    return module


def keep_one_batch(trainer_cfg: DictConfig, datamodule: StoryDataModule) -> None:
    """A fractional `trainer.limit_train_batches` (the demo recipe's 0.8) that would keep less than one
    batch of a small train split, which Lightning refuses, keeps one batch, with a warning naming the key."""
    limit, dataset = trainer_cfg.get("limit_train_batches"), datamodule.datasets.get("train")
    if not isinstance(limit, float) or dataset is None:
        return
    batches = math.ceil(len(dataset) / datamodule.batch_size)
    if 0 < limit < 1 and int(batches * limit) < 1:
        log.warning("trainer.limit_train_batches=%s of %d train batch(es) keeps none: training on 1 batch per epoch",
                    limit, batches)
        with open_dict(trainer_cfg):
            trainer_cfg.limit_train_batches = 1


def final_metrics(trainer: L.Trainer, module: L.LightningModule, datamodule: StoryDataModule) -> dict[str, float]:
    """Metrics of the best checkpoint (the last weights if none was saved) on the whole val and test splits.

    When the best checkpoint is the weights in memory, scored by the fit's last validation, that
    validation's metrics are kept: a second pass over the val split would compute the same numbers.
    """
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    ckpt_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    metrics: dict[str, float] = {}
    if ckpt_path and _best_is_in_memory(trainer, ckpt_path):
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        ckpt_path = None
    else:
        for result in trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False):
            metrics.update({k: float(v) for k, v in result.items()})
    for result in trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False):
        metrics.update({k: float(v) for k, v in result.items()})
    return metrics


def _best_is_in_memory(trainer: L.Trainer, ckpt_path: str) -> bool:
    """True when `ckpt_path` was saved after the last training step by the validation that ended the fit."""
    validated = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed > 0
    if not validated or not any(k.startswith("val/") for k in trainer.callback_metrics):
        return False
    saved_at = load_checkpoint(ckpt_path).get("global_step")
    return saved_at == trainer.global_step and not trainer.interrupted


# config groups that describe the experiment; callbacks, logger, paths and hydra only say where things go
HPARAM_GROUPS = ("stage", "data", "model", "trainer")
HPARAM_MAX_CHARS = 200  # longer values (a tokenizer's JSON, a long path list) are no hyperparameter to compare


def hparams_record(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyperparameters as flat `group.key` scalars: the experiment's groups and `seed`, without
    `_target_` class paths, unset values or values too long to read in a table; lists as text."""
    record: dict[str, Any] = {"seed": cfg.seed}
    for group in HPARAM_GROUPS:
        for key, value in leaves(OmegaConf.to_container(cfg.get(group) or {}, resolve=True), f"{group}.").items():
            if key.endswith("_target_") or value in (None, {}) or isinstance(value, list) and any(
                    isinstance(v, dict) for v in value):  # unset, or objects (trainer.plugins)
                continue
            value = value if isinstance(value, (bool, int, float, str)) else str(value)
            if not isinstance(value, str) or len(value) <= HPARAM_MAX_CHARS:
                record[key] = value
    return record


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """One hparams record per run, with the final metrics where the logger keeps them (TensorBoard's HPARAMS tab)."""
    record = hparams_record(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(record, metrics)
        else:
            logger.log_hyperparams(record)
        logger.save()


def train(cfg: DictConfig) -> float | None:
    """Fit the configured stage, write metrics.json and return `cfg.optimized_metric`."""
    cfg, resume_ckpt = resume_run(cfg)  # resume=...: the run's own config and its last.ckpt
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    keep_freed_memory()
    out = RunDir(cfg.paths.output_dir)
    datamodule: StoryDataModule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]  # logger=null: none
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks = [c for c in callbacks if loggers or not isinstance(c, LearningRateMonitor)]  # it refuses no logger
    keep_one_batch(cfg.trainer, datamodule)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_ckpt, weights_only=True)
    keep = trainer.is_global_zero and not trainer.fast_dev_run  # debug=fdr: a check that saves nothing
    if keep and datamodule.tokenizer is not None:
        datamodule.tokenizer.save(out.tokenizer)
    # read before the best checkpoint is evaluated: loading it restores the callbacks' state of that time
    divergence = [c.summary() for c in trainer.callbacks if isinstance(c, DivergenceMonitor)]
    metrics = final_metrics(trainer, module, datamodule)
    for summary in divergence:
        metrics |= summary
    metrics |= {f"data/{k}": float(v) for k, v in datamodule.text_stats.items()}
    if keep:
        write_json_atomic(out.metrics, metrics)
        log_hparams(trainer, cfg, metrics)
    if trainer.is_global_zero:
        print_table(metrics, "test", title=f"{cfg.stage.name}: test split ({out.path})")
    if keep:
        log.info("metrics: %s", out.metrics)
    return metrics.get(cfg.optimized_metric)


STAGES = {"pretrain_ae": train, "multimodal": train, "evaluate": evaluate, "predict": predict}


def run(cfg: DictConfig) -> float | None:
    """Run the stage named by `stage.name` (selected with `stage=...`)."""
    check_types(cfg)
    if cfg.stage.name not in STAGES:
        raise ConfigError(f"unknown stage {cfg.stage.name!r}; choose one of {sorted(STAGES)}")
    return STAGES[cfg.stage.name](cfg)
