"""Every value a job logs, kept in memory (and in its checkpoints) for the end-of-job verdicts.

The verdicts of a job are computed from this history, not from a file an optional logger
wrote, so ``logger=none`` still gets ``verdicts.json``, and a resumed job's verdicts cover
the steps before the resume too (the history travels in the checkpoint).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pytorch_lightning.callbacks import Callback

from optprobe.run.run_store import MemoryLogger


class MetricHistory(MemoryLogger, Callback):
    """A logger that keeps ``rows[step] = {key: value}`` and a callback that saves them.

    Attach the same object as a logger (it receives everything logged) and as a callback
    (its ``state_dict`` is checkpointed, columnar: key -> (steps, values)).
    """

    STATE_KEY = "optprobe.MetricHistory"

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def seed(self, metrics: pd.DataFrame, before_step: int) -> None:
        """Take the rows of ``metrics`` (a job's metrics.csv) logged before ``before_step``: for
        a checkpoint written before the history was checkpointed (optprobe < 0.2)."""
        for row in metrics[metrics["step"] < before_step].to_dict("records"):
            step = int(row.pop("step"))
            values = {k: float(v) for k, v in row.items() if pd.notna(v)}
            self.rows.setdefault(step, {}).update(values)

    def frame(self) -> pd.DataFrame:
        """One row per logged step (column ``step``), one column per key, NaN where not logged."""
        if not self.rows:
            return pd.DataFrame({"step": pd.Series(dtype=float)})
        df = pd.DataFrame.from_dict(self.rows, orient="index").sort_index()
        df.insert(0, "step", df.index.astype(float))
        return df.reset_index(drop=True)

    def state_dict(self) -> dict[str, Any]:
        columns: dict[str, tuple[list[int], list[float]]] = {}
        for step, row in sorted(self.rows.items()):
            for key, value in row.items():
                steps, values = columns.setdefault(key, ([], []))
                steps.append(step)
                values.append(value)
        return {"columns": columns}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = {}
        for key, (steps, values) in state_dict["columns"].items():
            for step, value in zip(steps, values):
                self.rows.setdefault(step, {})[key] = value
