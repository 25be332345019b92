"""Hydra callbacks: refuse an unwritable, taken or busy output folder (and a SLURM sweep without
a controller) before any job; say which job of how many starts; tabulate a sweep."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from optprobe.log import say
from optprobe.progress import sweep_line
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


def sweep_size(config: DictConfig) -> int | None:
    """Number of jobs of a multirun: the grid of its sweep overrides (``a=1,2 b=x,y``: 4) and
    ``hydra.sweeper.params``, as Hydra's basic sweeper expands them; None when they do not
    parse as a grid (another sweeper's syntax)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # not a grid: the line says "job i" without a total
        return None


class SweepProgress(Callback):
    """Hydra callback: as each job of a multirun starts, print ``[optprobe] job i of N, ~T
    left``, T from the mean time of the jobs finished so far (in this process: the basic
    launcher; a SLURM launcher's jobs print their number only).

    ``jobs_before`` and ``jobs_total`` place this multirun in a longer series (``make
    reproduce`` runs three: the second starts at job ``jobs_before + 1`` of ``jobs_total``);
    by default the multirun stands alone.
    """

    def __init__(self, jobs_before: int = 0, jobs_total: int | None = None) -> None:
        self.jobs_before = jobs_before
        self.jobs_total = jobs_total
        self.size: int | None = None
        self.finished_s: list[float] = []
        self.job_started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.size = sweep_size(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        total = self.jobs_total or (self.size and self.jobs_before + self.size)
        say(sweep_line(self.jobs_before + config.hydra.job.num + 1, total, self.finished_s))
        self.job_started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
            self.finished_s.append(time.perf_counter() - self.job_started)
