"""What a job's ``summary.json`` starts with: who ran what, where, from which commit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from optprobe.run.hydra_context import hydra_identity

SLURM_VARIABLES = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_restart_count": "SLURM_RESTART_COUNT",
}


def git_commit() -> str | None:
    """The commit of the optprobe checkout that runs (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_summary(cfg: DictConfig, processes: int) -> dict[str, Any]:
    """The "running" summary of a job: folder, overrides, commit, SLURM ids, seed, command."""
    _, overrides = hydra_identity()
    return {
        "status": "running",
        "output_dir": str(cfg.paths.output_dir),
        "overrides": overrides,
        "git_commit": git_commit(),
        **{key: os.environ.get(var) for key, var in SLURM_VARIABLES.items()},
        "seed": cfg.seed,
        "processes": processes,
        "command": " ".join(sys.argv),
    }


def to_float_dict(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensors and numbers to plain floats (for JSON)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}
