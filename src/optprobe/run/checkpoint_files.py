"""Checkpoint files that cannot be read: found before training, named with the job's others."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from optprobe.run.folder import JobFolder


class DamagedCheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """None when ``path`` reads as a checkpoint, else what is wrong with it.

    Checkpoints are zip archives: a truncated one has no central directory, a corrupt member
    fails its CRC (confirmed by loading it, since a writer may skip CRCs). Other files are
    loaded (torch's legacy format, or not a checkpoint at all)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is None:
                    return None
        _load(path)
    except Exception as err:  # noqa: BLE001 - any failure to read is the answer
        return f"{type(err).__name__}: {err}".strip()
    return None


def job_folder_of(checkpoint: Path) -> JobFolder:
    """The job folder a checkpoint belongs to (``<job>/checkpoints/x.ckpt`` or ``<job>/x.ckpt``)."""
    parent = checkpoint.parent
    return JobFolder(parent.parent if parent.name == JobFolder.CHECKPOINTS else parent)


def other_checkpoints(checkpoint: Path) -> list[tuple[Path, str | None]]:
    """The job's other checkpoints (``checkpoints/*.ckpt``, ``hpc_ckpt_<n>.ckpt``), each with
    its problem (None: intact)."""
    own = checkpoint.resolve()
    files = job_folder_of(checkpoint).checkpoint_files()
    return [(p, checkpoint_problem(p)) for p in files if p.resolve() != own]


def damaged_message(setting: str, checkpoint: Path, problem: str) -> str:
    """The error for a damaged checkpoint: the file, that it is damaged, the job's others."""
    others = other_checkpoints(checkpoint)
    listed = ", ".join(f"{p} ({'damaged' if why else 'intact'})" for p, why in others)
    intact = [p for p, why in others if why is None]
    if intact:
        fix = (
            f"Other checkpoints of this job: {listed}; resume from {intact[-1]} with "
            f"ckpt_path={intact[-1]}"
        )
    elif others:
        fix = f"The job's other checkpoints are damaged too ({listed}); start the run again"
    else:
        fix = "The job has no other checkpoint (last.ckpt, hpc_ckpt_<n>.ckpt); start the run again"
    return (
        f"{setting}={checkpoint} is damaged: it cannot be read as a checkpoint ({problem}); "
        f"it was cut off while being written or copied, or it is not a checkpoint. {fix}"
    )


def check_checkpoint(setting: str, path: str | os.PathLike[str]) -> None:
    """Raise ``DamagedCheckpointError`` when the existing file ``path`` cannot be read."""
    path = Path(path)
    if path.is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise DamagedCheckpointError(damaged_message(setting, path, problem))


def load_checkpoint(path: str | os.PathLike[str], setting: str = "ckpt_path") -> dict[str, Any]:
    """``torch.load`` of a checkpoint; a file that cannot be read is a
    ``DamagedCheckpointError`` naming it and the job's other checkpoints."""
    path = Path(path)
    try:
        return _load(path)
    except Exception as err:
        problem = f"{type(err).__name__}: {err}".strip()
        raise DamagedCheckpointError(damaged_message(setting, path, problem)) from err
