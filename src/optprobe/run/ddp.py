"""The worker processes of a single-node ``trainer=ddp`` job.

The job starts the extra ranks itself (``python -m optprobe.cli.ddp_worker <config>``, on the
config rank 0 resolved), instead of Lightning's launcher that re-runs the command line: under
``-m`` that would start the whole sweep again in every rank. Only rank 0 writes files and logs;
every rank computes the same probe values, because each probe pass on the step's batch is
reduced over the ranks (``optprobe.dist``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optprobe.dist import end_process_group
from optprobe.log import warn

WORKER_FLAG = "OPTPROBE_DDP_WORKER"
# Set by launchers that start one process per rank themselves (torchrun, srun with ntasks > 1).
EXTERNAL_LAUNCH_VARIABLES = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def launched_externally() -> bool:
    """True when some launcher already started one process per rank (torchrun, srun -n N)."""
    if any(name in os.environ for name in EXTERNAL_LAUNCH_VARIABLES):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def ddp_process_count(trainer_cfg: Mapping[str, Any]) -> int:
    """Processes a single-node DDP job needs (1: not DDP, or another launcher starts them)."""
    strategy = trainer_cfg.get("strategy")
    if not isinstance(strategy, str) or not strategy.startswith("ddp"):
        return 1
    if any(kind in strategy for kind in ("spawn", "fork", "notebook")):
        return 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    elif not isinstance(devices, (int, str)) and hasattr(devices, "__len__"):
        devices = len(devices)  # a list of device indices
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"trainer.devices={devices!r} with trainer.strategy={strategy}: give the number of "
            "processes, e.g. trainer.devices=2"
        )
    if int(trainer_cfg.get("num_nodes", 1) or 1) != 1 or launched_externally():
        return 1
    return devices


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DDPWorkers:
    """Rank 0's side of a single-node DDP job: the environment and the ranks 1..n-1.

    ``__enter__`` sets the rendezvous variables in this process (so Lightning sees the ranks
    as started externally and does not re-run the command line); ``start`` launches the other
    ranks on a config file once the config is checked; ``__exit__`` waits for them, stops any
    left after rank 0 failed, ends the process group, restores the environment and removes
    the config file. A worker that exits non-zero is reported at once and fails the job.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.procs: list[subprocess.Popen] = []
        self.config_path: Path | None = None
        self._saved_env: dict[str, str | None] = {}
        self._watcher: threading.Thread | None = None
        self._done = threading.Event()

    def __enter__(self) -> DDPWorkers:
        env = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(self.processes),
            "NODE_RANK": "0",
            "LOCAL_RANK": "0",
            "RANK": "0",
        }
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        return self

    def start(self, resolved_config: Mapping[str, Any]) -> None:
        """Launch ranks 1..n-1 on ``resolved_config`` (a plain, fully resolved dict)."""
        from omegaconf import OmegaConf

        fd, name = tempfile.mkstemp(prefix="optprobe-ddp-", suffix=".yaml")
        os.close(fd)
        self.config_path = Path(name)
        OmegaConf.save(OmegaConf.create(dict(resolved_config)), self.config_path)
        threads = max(1, (os.cpu_count() or 1) // self.processes)
        for rank in range(1, self.processes):
            env = {
                **os.environ,
                "LOCAL_RANK": str(rank),
                "RANK": str(rank),
                WORKER_FLAG: "1",
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
            }
            cmd = [sys.executable, "-m", "optprobe.cli.ddp_worker", str(self.config_path)]
            self.procs.append(subprocess.Popen(cmd, env=env))
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._done.wait(2.0):
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() not in (None, 0):
                    warn(
                        f"DDP rank {rank} exited with code {proc.returncode} (its error is "
                        "above); rank 0 stops at its next collective"
                    )
                    return

    def failed_ranks(self) -> list[tuple[int, int]]:
        """(rank, exit code) of every worker that did not exit cleanly."""
        return [
            (rank, proc.returncode)
            for rank, proc in enumerate(self.procs, start=1)
            if proc.returncode != 0
        ]

    def __exit__(self, exc_type, exc, tb) -> None:
        self._done.set()
        end_process_group()
        deadline = time.monotonic() + (5.0 if exc_type else 120.0)
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=30)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.config_path is not None:
            self.config_path.unlink(missing_ok=True)
        failed = self.failed_ranks()
        if failed and exc_type is None:
            detail = ", ".join(f"rank {r}: exit code {c}" for r, c in failed)
            raise RuntimeError(f"DDP worker processes failed ({detail}); see their output above")
