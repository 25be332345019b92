"""Hydra callbacks: refuse an unwritable output folder before any job; tabulate a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from optprobe.log import say
from optprobe.run.checks import make_writable_dir
from optprobe.run.folder import SWEEP_SUMMARY
from optprobe.run.sweep_table import format_table, summarize_sweep


class OutputDirCheck(Callback):
    """Hydra callback: stop before any job starts when the run or sweep folder is not writable.

    Exits (SystemExit) with the message: Hydra turns exceptions of callbacks into warnings.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        try:
            make_writable_dir(folder)
        except PermissionError as err:
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
