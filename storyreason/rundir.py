"""A run directory: the files one `python train.py` run keeps, whether it finished, and finding runs.

    <paths.root>/<stage>/<time>/     one run (conf/hydra/default.yaml)
      .hydra/config.yaml             the config the run started with; overrides.yaml its command line
      .hydra/resumed/<time>/         what each resumed continuation was given
      train.log                      everything logged (Hydra's job log, named after train.py)
      tokenizer.json                 stage 2's caption tokenizer (also in its checkpoints)
      checkpoints/best.ckpt          the best validation score (ModelCheckpoint, conf/callbacks/default.yaml)
      checkpoints/last.ckpt          the newest training state: what `resume=` continues
      metrics.json                   the final metrics: a run is finished once it wrote them

Every other module asks this one for these names, so the layout is written down once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from storyreason.errors import CheckpointError


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory, and what they say about the run."""

    path: Path

    HYDRA: ClassVar[str] = ".hydra"
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    BEST: ClassVar[str] = "best.ckpt"
    LAST: ClassVar[str] = "last.ckpt"
    METRICS: ClassVar[str] = "metrics.json"
    TOKENIZER: ClassVar[str] = "tokenizer.json"
    LOG: ClassVar[str] = "train.log"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def hydra(self) -> Path:
        """Hydra's record of the run's config (`output_subdir`)."""
        return self.path / self.HYDRA

    @property
    def config(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.hydra / "overrides.yaml"

    @property
    def hydra_config(self) -> Path:
        """Hydra's own settings for the run (its sweeper, launcher, ...)."""
        return self.hydra / "hydra.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / self.BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / self.LAST

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def tokenizer(self) -> Path:
        return self.path / self.TOKENIZER

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def finished(self) -> bool:
        """A run is finished once it wrote metrics.json (after its final evaluation)."""
        return self.metrics.is_file()

    @property
    def stage(self) -> str | None:
        """The stage the run was trained with, read from its saved config (None: no storyreason run)."""
        if not self.config.is_file():
            return None
        return OmegaConf.select(OmegaConf.load(self.config), "stage.name")

    @property
    def sweep_job(self) -> bool:
        """Whether the run was a job of a multirun (`-m`): Hydra recorded that mode, or it lies under `multirun/`."""
        if self.hydra_config.is_file():
            mode = OmegaConf.select(OmegaConf.load(self.hydra_config), "hydra.mode", default=None)
            if mode is not None:
                return str(mode) == RunMode.MULTIRUN.name
        return "multirun" in self.path.parts

    def limits(self) -> list[str]:
        """What made the run a debug or limited one (`debug=fdr`, `trainer.limit_test_batches=2`), read from its
        saved config; empty for a full run.

        Limited: a debug config; fast_dev_run or overfit_batches; a cap on validation or test batches (its
        scores do not cover the split); max_steps; a count of train batches. A fraction of the train batches
        is a recipe's epoch size (experiment=demo trains stage 1 on half an epoch), so it does not count.
        """
        found = []
        if self.hydra_config.is_file():
            debug = OmegaConf.select(OmegaConf.load(self.hydra_config), "hydra.runtime.choices.debug", default=None)
            if debug not in (None, "null"):
                found.append(f"debug={debug}")
        trainer = OmegaConf.select(OmegaConf.load(self.config), "trainer", default=None) if self.config.is_file() else None
        trainer = OmegaConf.to_container(trainer, resolve=False) if trainer is not None else {}

        def whole(value: object) -> bool:  # an int is a count of batches, a float a fraction
            return value is None or isinstance(value, float) and value >= 1.0

        checks = {
            "fast_dev_run": lambda v: v in (None, False, 0),
            "overfit_batches": lambda v: v in (None, 0, 0.0),
            "limit_val_batches": whole,
            "limit_test_batches": whole,
            "max_steps": lambda v: v in (None, -1),
            "limit_train_batches": lambda v: v is None or isinstance(v, float),
        }
        found += [f"trainer.{key}={trainer[key]}" for key, full in checks.items() if key in trainer and not full(trainer[key])]
        return found

    def relative(self, path: Path) -> str:
        """`path` as the run directory's own name for it (`checkpoints/best.ckpt`), for messages."""
        return path.relative_to(self.path).as_posix()

    def best_checkpoint(self) -> Path:
        """checkpoints/best.ckpt, which a finished run has."""
        if not self.best.is_file():
            raise CheckpointError(f"{self.path} has no {self.relative(self.best)}: is it a finished storyreason run?")
        return self.best

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir | None:
        """The run a checkpoint was saved in (`<run>/checkpoints/x.ckpt`), if it is one."""
        ckpt = Path(ckpt)
        return cls(ckpt.parent.parent) if ckpt.parent.name == cls.CHECKPOINTS else None


def latest_finished_run(root: str | Path, stage: str) -> RunDir:
    """The finished run of `stage` under `root` whose metrics.json is newest (the demo's stage 2)."""
    runs = _finished_runs(root, stage)
    if not runs:
        raise CheckpointError(f"no finished {stage} run under {root}")
    return runs[0]


def latest_full_run(root: str | Path, stage: str) -> tuple[RunDir, list[RunDir]]:
    """The newest finished run of `stage` under `root` that is neither a sweep job nor a debug or limited
    run (`model.ae_ckpt=auto`), and the newer finished runs it passed over. A sweep's jobs or a quick check
    finished after a real run must not silently become the autoencoder of the next stage-2 run."""
    runs = _finished_runs(root, stage)
    for k, run in enumerate(runs):
        if not run.sweep_job and not run.limits():
            return run, runs[:k]
    if not runs:
        raise CheckpointError(f"no finished {stage} run under {root}")
    example = runs[0]
    why = "a sweep job" if example.sweep_job else ", ".join(example.limits())
    raise CheckpointError(
        f"the {len(runs)} finished {stage} run(s) under {root} are all sweep jobs or debug/limited runs "
        f"(the newest, {example.path}: {why})"
    )


def _finished_runs(root: str | Path, stage: str) -> list[RunDir]:
    """Finished runs of `stage` under `root` with a best checkpoint, newest metrics.json first."""
    runs = [RunDir(m.parent) for m in Path(root).glob(f"**/{RunDir.METRICS}")]
    runs = [r for r in runs if r.best.is_file() and r.stage == stage]
    return sorted(runs, key=lambda r: r.metrics.stat().st_mtime, reverse=True)


def latest_unfinished_run(root: str | Path, stage: str) -> RunDir:
    """The run of `stage` under `root` without metrics.json whose last.ckpt is newest (`resume=latest`)."""
    runs = [RunDir(c.parents[1]) for c in Path(root).glob(f"**/{RunDir.CHECKPOINTS}/{RunDir.LAST}")]
    runs = [r for r in runs if not r.finished and r.stage == stage]
    if not runs:
        raise CheckpointError(
            f"resume=latest found no unfinished {stage} run under {root} (a run directory with "
            f"{RunDir.CHECKPOINTS}/{RunDir.LAST} and no {RunDir.METRICS}); give resume=RUN_DIR, "
            "or paths.root=... if it lives elsewhere"
        )
    return max(runs, key=lambda r: r.last.stat().st_mtime)


# what a run directory holds before its first training step; anything else means it did some work
_BEFORE_FIRST_STEP = (RunDir.HYDRA, RunDir.LOG, RunDir.TOKENIZER, "skipped_stories.json", "tensorboard/hparams.yaml")


def discard_unstarted_run(cfg: DictConfig) -> bool:
    """Remove the run directory of a run that failed before doing anything (a config, checkpoint or data
    error, a crash before the first step), so it is not left with only .hydra/ and train.log; train.py also
    calls it after a `debug=fdr` run, which saves nothing else.

    Never a resumed run (its directory is older than this command), a sweep job (its directory
    records the failure for the sweep summary), or one that holds anything else: checkpoints,
    TensorBoard events, metrics, predictions. Rank 0 only. True when the directory was removed.
    """
    from lightning.pytorch.utilities import rank_zero_only  # here: train.py composes configs without Lightning

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN or rank_zero_only.rank != 0:
        return False
    if cfg.get("resume") not in (None, ""):
        return False
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not run_dir.is_dir():
        return False
    files = [f.relative_to(run_dir).as_posix() for f in run_dir.rglob("*") if not f.is_dir()]
    if any(not any(f == k or f.startswith(k + "/") for k in _BEFORE_FIRST_STEP) for f in files):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent  # <root>/<stage>/ when this was its only run
    if parent != Path(cfg.paths.root) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return True
