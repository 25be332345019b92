"""Before a sweep through a SLURM launcher: is a SLURM controller reachable from here?"""

from __future__ import annotations

import shutil
import subprocess

from omegaconf import DictConfig, OmegaConf

SLURM_LAUNCHER = "SlurmLauncher"  # the class of hydra_submitit_launcher's slurm launcher
COMMANDS = ("sbatch", "srun", "sinfo", "sacct")  # what submitit and the launcher call
TIMEOUT_S = 20


def uses_slurm(config: DictConfig) -> bool:
    """True when the sweep goes through ``hydra/launcher=slurm`` (or ``slurm_gpu``)."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    return str(target or "").endswith(SLURM_LAUNCHER)


def controller_problem() -> str | None:
    """None when the SLURM commands exist and ``sinfo`` gets an answer from slurmctld."""
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        return f"the SLURM commands {', '.join(missing)} are not on PATH"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"sinfo got no answer from the controller within {TIMEOUT_S} s"
    except OSError as err:
        return f"sinfo cannot run ({err})"
    if out.returncode != 0:
        said = " ".join((out.stderr or out.stdout).split()) or f"exit code {out.returncode}"
        return f"sinfo cannot reach the controller ({said})"
    return None


def slurm_unreachable_message(config: DictConfig) -> str | None:
    """One line for a SLURM sweep that cannot be submitted from here, or None."""
    if not uses_slurm(config):
        return None
    problem = controller_problem()
    if problem is None:
        return None
    return (
        f"hydra/launcher=slurm needs a reachable SLURM controller, but {problem}. Start the "
        "local single-node cluster with `sudo bash slurm/start_cluster.sh` (see "
        "slurm/README.md), run the sweep from a cluster's login node, or run the jobs here "
        "with hydra/launcher=submitit_local (or no hydra/launcher=)"
    )
