"""Entry point: `python train.py stage=pretrain_ae` then `python train.py stage=multimodal`."""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from storyreason.run import run
from storyreason.sweeps import record_job

log = logging.getLogger("storyreason")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return record_job(run, cfg)  # in a sweep (-m) a failing job is recorded and the sweep goes on
    except ValueError as err:  # our config, data and checkpoint errors: one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)


if __name__ == "__main__":
    main()
