"""What a run needs before Lightning's DDP machinery exists: the rank of this process, the data cache
built once per node, and a sweep job's command line for the ranks Lightning starts."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from storyreason.data.cache import cache_path, is_cached
from storyreason.data.datamodule import StoryDataModule

log = logging.getLogger(__name__)

# what Lightning's launcher writes into os.environ for the ranks it starts
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def local_rank() -> int:
    """This process's rank on its node, from the variables Lightning, torchrun or SLURM set (0 if none)."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def prepare_data_once(datamodule: StoryDataModule, poll_s: float = 1.0, timeout_s: float = 6 * 3600) -> None:
    """Build the data cache on local rank 0 only, before the trainer exists; other ranks wait for it.

    Ranks that Lightning starts itself come up after rank 0 got here, so they find the cache; ranks
    started side by side (srun, torchrun) wait until rank 0's build is renamed into place.
    """
    if local_rank() == 0:
        datamodule.prepare_data()
        return
    start = time.monotonic()
    while not is_cached(datamodule.source, datamodule.cache_dir):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"local rank {local_rank()} waited {timeout_s:.0f} s for rank 0 to build the data "
                               f"cache {cache_path(datamodule.source, datamodule.cache_dir)}")
        time.sleep(poll_s)


@contextmanager
def sweep_job_as_single_run(output_dir: str | Path) -> Iterator[None]:
    """Inside a sweep job: make the command line Lightning re-runs for DDP ranks > 0 this job alone.

    Lightning starts those ranks with this process's argv plus `hydra.run.dir=<run dir>`; in a sweep
    the argv is the whole sweep (`-m` and every value) and the run dir is not the job's directory.
    Within the context the argv holds just this job's overrides and the run dir is the job's
    directory; afterwards argv and the launcher's environment variables are put back and the process
    group is closed, so the next job of the sweep starts its own ranks again.
    """
    argv, env = list(sys.argv), {k: os.environ.get(k) for k in _LAUNCH_ENV}
    hydra = HydraConfig.get()
    sys.argv = [argv[0], *hydra.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra), open_dict(hydra):
        hydra.run.dir = str(output_dir)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # its other ranks ended with the job
        sys.argv = argv
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
