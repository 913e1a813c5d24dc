"""Entry point: `python train.py stage=pretrain_ae` then `python train.py stage=multimodal`."""

import hydra
from omegaconf import DictConfig

from storyreason.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
