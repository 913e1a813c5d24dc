"""Shared fixtures: the real Hydra config, composed with tiny data and model sizes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from storyreason.config import null_groups_removed

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# One intra-op thread per process: `make test` runs one pytest-xdist worker per core, and two spinning
# OpenMP threads per process on a shared machine slow a tiny run many times over (docs/testing.md); one
# thread also keeps the results bit-stable, so every worker's runs are the same.
torch.set_num_threads(1)

TINY = [
    "data.source.num_stories={train:24,val:6,test:6}",
    "data.source.story_length=6",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "data.max_caption_len=24",
    "model.autoencoder.channels=[8,16,16]",
    "model.autoencoder.latent_dim=64",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]
TINY_STORY = [
    "model.story.embed_dim=16",
    "model.story.text_dim=16",
    "model.story.fusion_dim=32",
    "model.story.state_dim=32",
    "model.story.decoder_dim=32",
    "model.story.heads=2",
    "model.story.latent_hidden=8",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`: `-n 2 --dist loadgroup`), the tests of a file that share a module-scoped
    fixture (a training run, a sweep) run on one worker, so that fixture is built once, not once per worker."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures and any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def compose_config(root: Path, stage: str, overrides: list[str] = (), run_name: str | None = None) -> DictConfig:
    """Compose conf/config.yaml as train.py would, with tiny sizes and everything under `root`."""
    GlobalHydra.instance().clear()
    extra = TINY_STORY if stage == "multimodal" else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        given = null_groups_removed([f"stage={stage}", f"paths.root={root}", *TINY, *extra, *overrides], Path(CONF))
        cfg = compose(config_name="config", overrides=given)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / stage / (run_name or "run"))
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    _save_hydra_config(cfg)
    return cfg


def _save_hydra_config(cfg: DictConfig) -> None:
    """What Hydra writes into a run's .hydra/ (the stage lookup of model.ae_ckpt=auto reads it)."""
    from omegaconf import OmegaConf

    hydra_dir = Path(cfg.paths.output_dir) / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")


def read_metrics(cfg: DictConfig) -> dict[str, float]:
    """The flat metrics.json of a finished run."""
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` run once per test session, also under pytest-xdist: the first worker to ask builds it
    under a file lock in the folder all workers share, the others wait for it and reuse it (read-only)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # a worker's own is <shared>/<its name>
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way left it
            folder.mkdir()
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def ae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny stage-1 run (root folder), shared by the stage-2 tests."""
    from storyreason.run import train

    def build(root: Path) -> Path:
        train(compose_config(root, "pretrain_ae"))
        return root

    return built_once(tmp_path_factory, "runs", build)


@pytest.fixture(scope="session")
def story_run(ae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny stage-2 run (its run directory) over `ae_run`'s autoencoder, found by model.ae_ckpt=auto."""
    from storyreason.run import train

    def build(_: Path) -> Path:
        cfg = compose_config(ae_run, "multimodal", run_name="story")
        train(cfg)
        return Path(cfg.paths.output_dir)

    return built_once(tmp_path_factory, "story", build)


def scalars(run_dir: Path, tag: str) -> list[float]:
    """Values of one TensorBoard scalar of a run, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]
