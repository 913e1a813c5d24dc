"""Resume: the directory a resumed run writes to, and the config it continues with.

`python train.py stage=multimodal resume=RUN_DIR` (or `resume=latest`) continues RUN_DIR from its
checkpoints/last.ckpt. Hydra's run directory is RUN_DIR itself (the `run_dir` resolver in
conf/hydra/default.yaml), so logs, TensorBoard events and checkpoints go on in the same place; the
config is the one the run started with; Lightning restores the model, optimizer, scheduler, loops
and callbacks, and the datamodule its place in the epoch. Nothing in training draws from the global
random number generators (the train order has its own, seeded by the epoch), so they need no saving.
What keeps last.ckpt current and whole, and stops cleanly on a signal, is in storyreason/callbacks.py.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from storyreason.config import leaves
from storyreason.errors import CheckpointError
from storyreason.rundir import RunDir, latest_unfinished_run

log = logging.getLogger(__name__)

_ABSENT = object()


def resume_dir(resume: str, root: str | Path, stage: str) -> Path:
    """The absolute run directory `resume=` names: a directory, or `latest` (the newest unfinished run)."""
    if str(resume) == "latest":
        return latest_unfinished_run(root, stage).path.resolve()
    run = RunDir(resume)
    if not run.path.is_dir():
        raise CheckpointError(f"resume={resume}: no such run directory")
    if not run.last.is_file():
        raise CheckpointError(
            f"resume={resume} has no {run.relative(run.last)}: it stopped before its first checkpoint, start it again"
        )
    return run.path.resolve()


def _run_dir(resume: str | None, root: str, stage: str, timestamp: str) -> str:
    """Resolver `run_dir`: a new `<root>/<stage>/<timestamp>` directory, or the run `resume` names.

    A `resume` naming no resumable run gets a new directory too: `resume_run` then stops with a
    one-line error, where an error raised here would surface as a Hydra traceback.
    """
    if resume not in (None, ""):
        try:
            return str(resume_dir(resume, root, stage))
        except CheckpointError:
            pass
    return f"{root}/{stage}/{timestamp}"


def _hydra_subdir(resume: str | None, timestamp: str) -> str:
    """Resolver `hydra_subdir`: where Hydra saves the job's config. A resumed run saves its own under
    .hydra/resumed/<timestamp>, so .hydra/config.yaml stays the config the run started with."""
    return RunDir.HYDRA if resume in (None, "") else f"{RunDir.HYDRA}/resumed/{timestamp}"


# Registered on import: train.py imports this before @hydra.main composes the config, and a
# submitit job process imports it when it unpickles the task (storyreason.run imports this module).
OmegaConf.register_new_resolver("run_dir", _run_dir, use_cache=True, replace=True)
OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir, use_cache=True, replace=True)


def _overridden_keys() -> set[str]:
    """Config keys this command line overrides (`model.lr=...`, `+x=...`, `~x`, a group as `trainer=ddp`)."""
    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key.split("@", 1)[1] if "@" in key else key.replace("/", "."))
    return keys - {"resume"}


def _remove(cfg: DictConfig, key: str) -> None:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is not None and leaf in node:
        del node[leaf]


def continued_config(saved: DictConfig, current: DictConfig, overridden: set[str]) -> DictConfig:
    """The config a resumed run continues with: the run's own (`saved`), with the values of the keys
    this command line overrides taken from `current`, and keys the config files added since."""
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    old = leaves(OmegaConf.to_container(saved, resolve=False))
    new = leaves(OmegaConf.to_container(current, resolve=False))
    kept = []
    for key in sorted(old.keys() | new.keys()):
        before, now = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if key == "resume" or before == now:
            continue
        by_command_line = any(key == o or key.startswith(o + ".") for o in overridden)
        if not (by_command_line or before is _ABSENT):
            kept.append(key)
            continue
        if by_command_line:
            log.warning("resume: %s=%s from the command line replaces the run's %s; the result may differ from "
                        "an uninterrupted run", key, "<removed>" if now is _ABSENT else now,
                        "<unset>" if before is _ABSENT else before)
        if now is _ABSENT:
            _remove(merged, key)
        else:
            OmegaConf.update(merged, key, now, merge=False, force_add=True)
    if kept:
        log.info("resume: the run's own values of %d keys the config files now set differently (%s)",
                 len(kept), ", ".join(kept))
    return merged


def _purge_tensorboard_after(cfg: DictConfig, step: int) -> None:
    """TensorBoard loggers of the resumed run drop what the interrupted run logged at `step` and later
    (it got there again from the checkpoint), so each step shows once."""
    for logger in (cfg.get("logger") or {}).values():
        if str(logger.get("_target_", "")).endswith("TensorBoardLogger"):
            logger.purge_step = step


def _global_step(path: Path) -> int:
    """The training step a checkpoint was written at (read without loading its tensors)."""
    import torch  # here: train.py registers this module's resolvers before composing, without torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except (pickle.UnpicklingError, RuntimeError, OSError, KeyError) as err:
        raise CheckpointError(f"{path} is unreadable or not a Lightning checkpoint: {err}") from None


def resume_run(cfg: DictConfig) -> tuple[DictConfig, Path | None]:
    """For `resume=...`: the run's own config (see continued_config) and its last.ckpt; else `cfg, None`."""
    from storyreason.callbacks import AtomicCheckpointIO  # Lightning: imported once a stage runs

    if cfg.get("resume") in (None, ""):
        return cfg, None
    run = RunDir(Path(cfg.paths.output_dir).resolve())
    wanted = resume_dir(cfg.resume, cfg.paths.root, cfg.stage.name)
    if wanted != run.path:
        raise CheckpointError(
            f"resume={cfg.resume} continues {wanted} in that directory, but this job writes to {run.path}: "
            "resume one run at a time, not inside a sweep (-m)"
        )
    if run.finished:
        raise CheckpointError(
            f"resume={cfg.resume}: {run.path} already finished (it has {run.relative(run.metrics)}); "
            f"evaluate it with stage=evaluate ckpt_path={run.path}"
        )
    if not run.config.is_file():
        raise CheckpointError(
            f"resume={cfg.resume}: {run.path} has no {run.relative(run.config)}, so it is no storyreason run"
        )
    saved = OmegaConf.load(run.config)
    overridden = _overridden_keys()
    stage = OmegaConf.select(saved, "stage.name")
    if "stage" in overridden and stage != cfg.stage.name:
        raise CheckpointError(f"resume={cfg.resume}: {run.path} is a {stage} run, not stage={cfg.stage.name}")
    merged = continued_config(saved, cfg, overridden)
    merged.resume = str(run.path)
    _purge_tensorboard_after(merged, _global_step(run.last))
    AtomicCheckpointIO.discard_partial(run.checkpoints)
    log.info("resuming %s from %s", run.path, run.last)
    return merged, run.last
