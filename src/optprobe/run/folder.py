"""The files of one job folder (and of a sweep folder), by name, with atomic writes.

Every module that reads or writes a job's files goes through ``JobFolder``: no file name of a
job folder is spelled anywhere else.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SWEEP_SUMMARY = "sweep_summary.csv"
REPORT_DIR = "report"
REFERENCE_RUNS_DIR = "reference_runs"
# Hydra's record of a sweep and the submitit launcher's folder, in a sweep folder
MULTIRUN_RECORD = "multirun.yaml"
SUBMITIT_DIR = ".submitit"
# the lock a folder's writer holds (a job or sweep folder; <hash>.lock for a reference run)
LOCK = ".optprobe.lock"
# where Lightning saves and finds the checkpoint of a SLURM requeue (in the job folder)
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so an interrupted
    write never leaves a half-written file (the old content stays until the rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class JobFolder:
    """One job's folder: ``config.yaml``, ``summary.json``, ``metrics.csv``, ``verdicts.json``,
    ``checkpoints/last.ckpt``, ``probes/esd/`` and ``wandb/``."""

    CONFIG = "config.yaml"
    SUMMARY = "summary.json"
    METRICS = "metrics.csv"
    VERDICTS = "verdicts.json"
    CHECKPOINTS = "checkpoints"
    LAST_CHECKPOINT = "last.ckpt"
    HYDRA = ".hydra"
    LOCK = LOCK

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"JobFolder({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def verdicts(self) -> Path:
        return self.path / self.VERDICTS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / self.LAST_CHECKPOINT

    @property
    def esd(self) -> Path:
        """Spectral densities of the curvature probe (``step_<t>.npz`` and ``.png``)."""
        return self.path / "probes" / "esd"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    @property
    def lock(self) -> Path:
        """The lock file of the run that writes this folder (``optprobe.run.locks``)."""
        return self.path / LOCK

    def hpc_checkpoints(self) -> list[Path]:
        """``hpc_ckpt_<n>.ckpt`` of a SLURM requeue, by ``n`` (Lightning resumes from the last)."""
        found = [p for p in self.path.glob(HPC_CHECKPOINT_GLOB) if p.stem[9:].isdigit()]
        return sorted(found, key=lambda p: int(p.stem[9:]))

    def checkpoint_files(self) -> list[Path]:
        """Every checkpoint of the job: ``checkpoints/*.ckpt``, then ``hpc_ckpt_<n>.ckpt``."""
        saved = sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
        return [*saved, *self.hpc_checkpoints()]

    def is_job(self) -> bool:
        """True when the folder holds a job's summary or Hydra's records of one."""
        return self.summary.is_file() or (self.path / self.HYDRA).is_dir()

    def read_summary(self) -> dict[str, Any] | None:
        """The job's summary.json, or None when there is none."""
        return json.loads(self.summary.read_text()) if self.summary.is_file() else None

    def write_summary(self, payload: dict[str, Any]) -> None:
        self.write_json(self.summary, payload)

    def write_verdicts(self, payload: dict[str, Any] | None) -> None:
        """Write verdicts.json, or remove a stale one when ``payload`` is None."""
        if payload is None:
            self.verdicts.unlink(missing_ok=True)
        else:
            self.write_json(self.verdicts, payload)

    def read_verdicts(self) -> dict[str, Any] | None:
        return json.loads(self.verdicts.read_text()) if self.verdicts.is_file() else None

    @staticmethod
    def write_json(path: Path, payload: dict[str, Any]) -> None:
        write_atomically(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def make_writable_dir(path: str | Path) -> None:
    """Create the folder ``path`` (and parents) and check a file can be written in it, or raise
    a PermissionError that names the folder and the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: two runs checking one folder at once must not remove
        # each other's test file (the loser of a race then learns of the lock, not of this)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".optprobe-write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"output folder {path} is not writable ({err.strerror or err}); point runs at a "
            "folder you can write, e.g. paths.log_dir=$HOME/optprobe-logs (or set "
            "OPTPROBE_LOG_DIR), or fix the folder's permissions"
        ) from err
