"""Hydra callbacks: refuse an unwritable, taken or busy output folder (and a SLURM sweep without
a controller) before any job; tabulate a sweep."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from optprobe.log import say
from optprobe.rank import is_primary
from optprobe.run.folder import SWEEP_SUMMARY, make_writable_dir
from optprobe.run.launcher_check import slurm_unreachable_message
from optprobe.run.locks import FolderInUseError
from optprobe.run.ownership import (
    FolderTakenError,
    claim_job_folder,
    claim_sweep_folder,
    release_job_folder,
    release_sweep_folder,
)
from optprobe.run.sweep_table import format_table, summarize_sweep


class OutputDirCheck(Callback):
    """Hydra callback: before any job starts, stop when the run or sweep folder is not
    writable, belongs to another run or sweep, or is being written by another process; for a
    SLURM sweep, when no SLURM controller answers. Holds the folder's lock until the run or
    sweep ends (``optprobe.run.ownership``), so Hydra's own files (``.hydra/``) of a refused
    run never overwrite another run's.

    Exits (SystemExit) with one line: Hydra turns exceptions of callbacks into warnings.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = config.hydra.run.dir
        with exit_with_message(PermissionError, FolderInUseError, FolderTakenError):
            make_writable_dir(folder)
            if is_primary():  # under srun -n N / torchrun every rank starts Hydra
                ckpt = OmegaConf.select(config, "ckpt_path", throw_on_resolution_failure=False)
                claim_job_folder(folder, ckpt)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_job_folder(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        message = slurm_unreachable_message(config)
        if message:
            raise SystemExit(f"Error: {message}")
        with exit_with_message(PermissionError, FolderInUseError, FolderTakenError):
            make_writable_dir(config.hydra.sweep.dir)
            claim_sweep_folder(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_sweep_folder(config.hydra.sweep.dir)


@contextlib.contextmanager
def exit_with_message(*errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` into SystemExit("Error: <message>"): one line, no traceback."""
    try:
        yield
    except errors as err:
        raise SystemExit(f"Error: {err}") from err


class SweepSummaryCallback(Callback):
    """Hydra callback: after a multirun, print and save the table of its jobs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # the sweep dir interpolates ${hydra:...}
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarize_sweep(sweep_dir)
        say(f"\nSweep summary ({len(rows)} jobs) -> {sweep_dir / SWEEP_SUMMARY}")
        say(format_table(rows))
        failed = [r["job"] for r in rows if r.get("status") != "completed"]
        if failed:
            # Hydra turns exceptions in callbacks into warnings: exit non-zero explicitly.
            raise SystemExit(
                f"{len(failed)} of {len(rows)} jobs did not complete (jobs {', '.join(failed)}); "
                "the table above and each job's summary.json say why"
            )
