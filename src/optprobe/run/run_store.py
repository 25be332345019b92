"""The local run store: ``metrics.csv`` with one row per logged step, in the job folder."""

from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only


def merge_rows_by_step(path: str) -> None:
    """Rewrite a metrics CSV so that each step has one row (later values fill earlier gaps)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    merged: dict[str, dict[str, str]] = {}
    for row in rows:
        target = merged.setdefault(row["step"], {})
        target.update({k: v for k, v in row.items() if v != ""})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(merged.values())


class _StepMergingWriter(ExperimentWriter):
    """CSV writer that merges metrics logged at the same step and appends to an existing file."""

    def _check_log_dir_exists(self) -> None:
        # The job folder always holds Hydra's files; an existing metrics.csv (a resumed run in
        # the same folder) is kept and appended to, never deleted.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        if len(self.metrics) >= 2 and self.metrics[-2]["step"] == self.metrics[-1]["step"]:
            last = self.metrics.pop()
            self.metrics[-1].update(last)


class RunStoreLogger(CSVLogger):
    """Writes ``<save_dir>/metrics.csv`` (one row per step, one column per key) and
    ``<save_dir>/hparams.yaml`` (the resolved config)."""

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 50) -> None:
        super().__init__(
            save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps
        )

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _StepMergingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if os.path.isfile(path):
            merge_rows_by_step(path)


class MemoryLogger(Logger):
    """An in-memory logger: ``rows[step] = {key: value}`` (floats) for everything logged, e.g.
    for tests, benchmarks and notebooks that read probe values without files."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})

    def series(self, key: str) -> dict[int, float]:
        """step -> value of ``key``, for the steps that logged it."""
        return {s: r[key] for s, r in sorted(self.rows.items()) if key in r}
