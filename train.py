"""Entry point: `python train.py stage=pretrain_ae` then `python train.py stage=multimodal`."""

import hydra
from omegaconf import DictConfig

from storyreason.run import run
from storyreason.sweeps import record_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return record_job(run, cfg)  # in a sweep (-m) a failing job is recorded and the sweep goes on


if __name__ == "__main__":
    main()
