"""A job folder belongs to one run, a sweep folder to one sweep.

- A run writes into a folder that holds another run's results (``summary.json``,
  ``metrics.csv``, ``config.yaml``, ``verdicts.json``, checkpoints) only to continue that
  run: with ``ckpt_path=`` pointing at a checkpoint inside the folder, or as the same SLURM job
  restarted by a requeue (the folder's ``summary.json`` has this ``SLURM_JOB_ID``; Lightning
  resumes from its ``hpc_ckpt_<n>.ckpt``). Anything else is refused before a file is written.
- A sweep never writes into a folder that holds another sweep (job folders,
  ``multirun.yaml``, ``sweep_summary.csv``, ``.submitit/``).
- While a run or sweep writes its folder it holds the folder's lock (``optprobe.run.locks``):
  a second process fails at once, naming the holder.
"""

from __future__ import annotations

import os
from pathlib import Path

from optprobe.run import locks
from optprobe.run.folder import MULTIRUN_RECORD, SUBMITIT_DIR, SWEEP_SUMMARY, JobFolder

# what a sweep leaves in its folder besides the job folders
SWEEP_RECORDS = (MULTIRUN_RECORD, SWEEP_SUMMARY, SUBMITIT_DIR)
FRESH_FOLDER_FIX = (
    "or start the new run in a fresh folder: drop hydra.run.dir= (every run gets a new "
    "timestamped folder) or name a new one; remove the folder first if its results can go"
)


class FolderTakenError(FileExistsError):
    """The folder holds the results of another run (or sweep) that this one may not touch."""


def results_in(folder: JobFolder) -> list[str]:
    """The names of the run (or sweep) results in ``folder``: empty for a fresh folder
    (Hydra's ``.hydra/`` and log file and the lock file are not results)."""
    files = [folder.summary, folder.metrics, folder.config, folder.verdicts]
    found = [p.name for p in files if p.is_file()]
    found += [str(p.relative_to(folder.path)) for p in folder.checkpoint_files()]
    return found + [n for n in SWEEP_RECORDS if (folder.path / n).exists()]


def _inside(path: str | os.PathLike[str], folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _recorded_slurm_job(folder: JobFolder) -> str | None:
    try:
        summary = folder.read_summary() or {}
    except (OSError, ValueError):
        return None
    return summary.get("slurm_job_id")


def continues_the_run_in(folder: JobFolder, ckpt_path: str | None) -> bool:
    """True when a run with ``ckpt_path`` continues the run whose results ``folder`` holds."""
    if ckpt_path and _inside(ckpt_path, folder.path):
        return True
    job = os.environ.get("SLURM_JOB_ID")
    return bool(job) and job == _recorded_slurm_job(folder)


def check_job_folder_free(folder: JobFolder, ckpt_path: str | None) -> None:
    """Raise ``FolderTakenError`` when ``folder`` holds another run's results that a run with
    ``ckpt_path`` would mix with its own."""
    found = results_in(folder)
    if not found or continues_the_run_in(folder, ckpt_path):
        return
    checkpoints = sorted(folder.checkpoint_files(), key=lambda p: p != folder.last_checkpoint)
    resume = (
        f"To continue that run, resume it with its overrides and ckpt_path={checkpoints[0]}"
        if checkpoints
        else "It has no checkpoint to continue from"
    )
    given = f" (ckpt_path={ckpt_path} is not one of its checkpoints)" if ckpt_path else ""
    raise FolderTakenError(
        f"job folder {folder.path} already holds the results of another run "
        f"({', '.join(found)}){given}; a new run never writes into it, so the two are never "
        f"mixed. {resume}, {FRESH_FOLDER_FIX}"
    )


def claim_job_folder(path: str | os.PathLike[str], ckpt_path: str | None) -> None:
    """Lock the job folder ``path`` for this process and check that this run may write it;
    on failure nothing is held. Undo with ``release_job_folder``."""
    folder = JobFolder(path)
    locks.acquire(folder.lock, f"job folder {folder.path}")
    try:
        check_job_folder_free(folder, ckpt_path)
    except BaseException:
        locks.release(folder.lock)
        raise


def release_job_folder(path: str | os.PathLike[str]) -> None:
    locks.release(JobFolder(path).lock)


def sweep_contents(sweep_dir: Path) -> list[str]:
    """What in ``sweep_dir`` belongs to an earlier sweep (empty for a fresh folder)."""
    if not sweep_dir.is_dir():
        return []
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and JobFolder(p).is_job())
    return [*(f"job folder {n}" for n in jobs), *results_in(JobFolder(sweep_dir))]


def claim_sweep_folder(sweep_dir: str | os.PathLike[str]) -> None:
    """Lock the sweep folder for this process (the launcher) and check that no earlier sweep
    wrote it; on failure nothing is held. Undo with ``release_sweep_folder``."""
    sweep = Path(sweep_dir)
    locks.acquire(JobFolder(sweep).lock, f"sweep folder {sweep}")
    found = sweep_contents(sweep)
    if not found:
        return
    locks.release(JobFolder(sweep).lock)
    raise FolderTakenError(
        f"sweep folder {sweep} already holds another sweep or run ({', '.join(found)}); a new "
        "sweep never writes into it, so the two are never mixed. Drop hydra.sweep.dir= (every "
        "sweep gets a new timestamped folder) or name a new one; to continue one of its jobs, "
        f"run it alone: python train.py <its overrides> hydra.run.dir={sweep}/<job> "
        f"ckpt_path={sweep}/<job>/checkpoints/last.ckpt"
    )


def release_sweep_folder(sweep_dir: str | os.PathLike[str]) -> None:
    locks.release(JobFolder(Path(sweep_dir)).lock)
