"""Entry of ranks 1..n-1 of a ``trainer=ddp`` job: ``python -m optprobe.cli.ddp_worker <config>``
trains on the config rank 0 resolved (no files, no loggers)."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from optprobe.run.job import train


def main(config_path: str) -> None:
    train(OmegaConf.load(config_path))


if __name__ == "__main__":
    main(sys.argv[1])
