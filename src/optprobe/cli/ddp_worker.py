"""Entry of ranks 1..n-1 of a ``trainer=ddp`` job: ``python -m optprobe.cli.ddp_worker <config>``
trains on the config rank 0 resolved (no files, no loggers)."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from optprobe.dist import end_process_group
from optprobe.run.job import train


def main(config_path: str) -> None:
    """Train, then take down this rank's process group before the interpreter exits: left to
    interpreter teardown, the collective backend's threads were destroyed while still joinable
    and the rank aborted ("terminate called without an active exception", exit code -6) after
    a successful run, in one of several CI runs."""
    try:
        train(OmegaConf.load(config_path))
    finally:
        end_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
