"""Finding and safely loading checkpoints (always `weights_only=True`)."""

from __future__ import annotations

import inspect
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch

from storyreason.data.tokenizer import WordTokenizer
from storyreason.errors import CheckpointError
from storyreason.modules.autoencoder import AutoencoderModule
from storyreason.modules.multimodal import MultimodalStoryModule
from storyreason.rundir import RunDir, latest_full_run

log = logging.getLogger(__name__)

AE_STAGE = "pretrain_ae"
STORY_STAGE = "multimodal"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; refuse anything that needs arbitrary unpickling, and
    any file that is not a Lightning checkpoint (random bytes, text, a pickled list, a dict without
    a state_dict), naming the file instead of failing later with a KeyError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # garbage the safe unpickler cannot parse
            raise CheckpointError(f"{path} is not a checkpoint (torch.load cannot read it)") from None
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise CheckpointError(
            f"refusing to load {path}: it holds objects that only arbitrary unpickling can restore "
            f"(torch.load weights_only=True rejected {unsafe.group(1) if unsafe else 'it'}). Only load checkpoints "
            "written by storyreason or another source you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {err or 'the file ends early'}") from None
    except Exception as err:  # the unpickler meets garbage in many ways (KeyError, IndexError, ...)
        raise CheckpointError(f"{path} is not a checkpoint (torch.load: {type(err).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or not isinstance(ckpt.get("hyper_parameters", {}), dict):
        held = f"a dict with keys {sorted(map(str, ckpt))[:5]}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise CheckpointError(f"{path} is not a Lightning checkpoint: it holds {held}, not a state_dict")
    return ckpt


# in a sweep's directory: the run `model.ae_ckpt=auto` chose when the sweep started, for all its jobs
SWEEP_AE_CHOICE = "ae_ckpt_auto.txt"


def resolve_ae_checkpoint(ae_ckpt: str | None, root: str | Path, sweep_dir: str | Path | None = None) -> Path:
    """`model.ae_ckpt`: a checkpoint file, a stage-1 run directory, or `auto`: the newest finished stage-1
    run under `root` that is neither a sweep job nor a debug/limited run (`RunDir.limits`). A sweep's
    jobs take the run chosen when it started (`SWEEP_AE_CHOICE` in `sweep_dir`), so all use the same one."""
    hint = "Run stage 1 first (python train.py stage=pretrain_ae) or set model.ae_ckpt=PATH."
    if ae_ckpt in (None, "", "auto"):
        chosen = Path(sweep_dir) / SWEEP_AE_CHOICE if sweep_dir is not None else None
        if chosen is not None and chosen.is_file():
            path = Path(chosen.read_text().strip())
            log.info("model.ae_ckpt=auto: %s, chosen once for this sweep (%s)", _with_test_l1(path), chosen)
            return path
        try:
            run, passed = latest_full_run(root, AE_STAGE)
        except CheckpointError as err:
            raise CheckpointError(f"model.ae_ckpt=auto found no autoencoder: {err}. {hint}") from None
        log.info("model.ae_ckpt=auto: %s%s", _with_test_l1(run.best_checkpoint()),
                 f"; passed over {len(passed)} newer sweep job(s) or debug/limited run(s)" if passed else "")
        return run.best_checkpoint()
    path = Path(ae_ckpt)
    if path.is_dir():
        return RunDir(path).best_checkpoint()
    if not path.is_file():
        raise CheckpointError(f"model.ae_ckpt={ae_ckpt} does not exist. {hint}")
    return path


def _with_test_l1(ckpt: Path) -> str:
    """`<run dir> (test/l1 0.0216)` for a stage-1 run's checkpoint, so the log says which autoencoder and how good."""
    run = RunDir.of_checkpoint(ckpt)
    if run is None or not run.finished:
        return str(ckpt)
    l1 = json.loads(run.metrics.read_text()).get("test/l1")
    return f"{run.path} (test/l1 {'?' if l1 is None else f'{l1:.4f}'})"


def autoencoder_state(path: str | Path, expected: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Autoencoder weights of a stage-1 checkpoint, checked against the autoencoder config `expected`."""
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    if hparams.get("stage") != AE_STAGE or "autoencoder" not in hparams:
        raise CheckpointError(
            f"model.ae_ckpt={path} is not a stage-1 autoencoder checkpoint (stage={hparams.get('stage')!r}). "
            f"Run stage 1 first (python train.py stage=pretrain_ae) or point model.ae_ckpt at its {RunDir.BEST}."
        )
    saved = {"bottleneck": "spatial", **hparams["autoencoder"]}  # older stage-1 checkpoints: the only bottleneck then
    for key, value in expected.items():
        have = saved.get(key)
        same = list(have or []) == list(value) if isinstance(value, (list, tuple)) else have == value
        if not same:
            raise CheckpointError(
                f"model.ae_ckpt={path} has autoencoder.{key}={have} but this run needs "
                f"model.autoencoder.{key}={value}: retrain stage 1 with it or change the setting."
            )
    prefix = "autoencoder."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def resolve_checkpoint(ckpt_path: str | Path | None) -> Path:
    """`ckpt_path=`: a checkpoint file, or a run directory whose best checkpoint is used."""
    if ckpt_path in (None, ""):
        raise CheckpointError("ckpt_path is not set: pass ckpt_path=<checkpoint file or run directory>")
    path = Path(ckpt_path)
    if path.is_dir():
        return RunDir(path).best_checkpoint()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist (give a .ckpt file or a run directory)")
    return path


MODULES: dict[str, type[L.LightningModule]] = {AE_STAGE: AutoencoderModule, STORY_STAGE: MultimodalStoryModule}


def legacy_hyperparameters(hparams: dict[str, Any]) -> dict[str, Any]:
    """What an older checkpoint's hyperparameters lack, in this version's terms (passed to
    `load_from_checkpoint`, which takes them over the saved ones): stage-2 checkpoints saved before
    tokenizers were fitted objects hold a whitespace word vocabulary `vocab`, kept as it was."""
    if hparams.get("stage") == STORY_STAGE and "vocab" in hparams and "tokenizer_state" not in hparams:
        return {"tokenizer_state": WordTokenizer(hparams["vocab"], split_punctuation=False).to_json()}
    return {}


def module_from_checkpoint(path: str | Path) -> tuple[L.LightningModule, dict[str, Any]]:
    """The stage's LightningModule rebuilt from a checkpoint alone, in eval mode, and the loaded checkpoint.

    `load_checkpoint` reads the file first, for the stage to dispatch on and to refuse unsafe or broken
    files in our words; Lightning's `load_from_checkpoint(weights_only=True)` then builds the module.
    The hyperparameters are plain values (the tokenizer as JSON, autoencoder and story sizes, context
    length), so nothing else is read: a stage-2 module gets its autoencoder weights from the same state
    dict, never from the `ae_ckpt` path it was trained with.
    """
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    stage = hparams.get("stage")
    if stage not in MODULES:
        raise CheckpointError(
            f"{path} is not a storyreason checkpoint: its hyperparameters name stage {stage!r}, "
            f"not one of {sorted(MODULES)}"
        )
    cls = MODULES[stage]
    fixed = legacy_hyperparameters(hparams)
    replaced = {"vocab"} if fixed else set()
    dropped = sorted(set(hparams) - replaced - set(inspect.signature(cls.__init__).parameters))
    if dropped:  # Lightning leaves out what __init__ does not take, silently
        log.warning("%s: ignoring hyperparameters this version of the %s module does not take: %s",
                    path, stage, dropped)
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **fixed)
    except RuntimeError as err:
        if "Error(s) in loading state_dict" not in str(err):
            raise
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:])
        raise CheckpointError(f"{path} does not fit this version of the {stage} model ({detail})") from None
    return module.eval(), ckpt
