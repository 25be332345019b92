"""This process's rank from its environment, without importing torch (so the command line,
the logger and the Hydra callbacks stay light: see ``optprobe.dist`` for the collectives)."""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


def launch_rank() -> int:
    """Global rank of this process from its environment (0 outside data-parallel jobs)."""
    for name in RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return 0


def is_primary() -> bool:
    """True in the process that writes the job's files (rank 0)."""
    return launch_rank() == 0
