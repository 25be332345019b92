"""Entry point: ``python train.py [overrides]`` or ``python train.py -m optimizer=adam,sgd``."""

import hydra
from omegaconf import DictConfig

from optprobe.run.job import main as run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()
