"""Entry point: ``python train.py [overrides]`` or ``python train.py -m optimizer=adam,sgd``.

Imports only Hydra here: the config is composed (and a typo'd option or ``--cfg job``
answered) before torch and Lightning are imported inside ``main``.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from optprobe.run.job import main as run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
