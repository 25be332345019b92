"""Every value a job logs, kept in memory (and in its checkpoints) for the end-of-job verdicts.

The verdicts of a job are computed from this history, not from a file an optional logger
wrote, so ``logger=none`` still gets ``verdicts.json``, and a resumed job's verdicts cover
the steps before the resume too (the history travels in the checkpoint). The history also
keeps which probes ran from which step on (one segment per start or resume), so verdicts of
a job resumed with other probes say which steps they cover.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pytorch_lightning.callbacks import Callback

from optprobe.probes.base import ProbeCallback
from optprobe.run.run_store import MemoryLogger

PROBES_CHANGED = (
    "the probes changed when this job was resumed: each assumption is judged on the steps "
    "its probe ran on (see segments), not on the whole run"
)


class MetricHistory(MemoryLogger, Callback):
    """A logger that keeps ``rows[step] = {key: value}`` and a callback that saves them.

    Attach the same object as a logger (it receives everything logged) and as a callback
    (its ``state_dict`` is checkpointed, columnar: key -> (steps, values)).
    """

    STATE_KEY = "optprobe.MetricHistory"

    def __init__(self) -> None:
        super().__init__()
        # one entry per start or resume: {"first_step": step, "probes": [probe names]}
        self.segments: list[dict[str, Any]] = []

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

    def on_train_start(self, trainer, pl_module) -> None:
        probes = sorted(c.name for c in trainer.callbacks if isinstance(c, ProbeCallback))
        segment = {"first_step": int(trainer.global_step), "probes": probes}
        if self.segments and self.segments[-1]["first_step"] == segment["first_step"]:
            self.segments.pop()  # a start at the same step again: this one counts
        self.segments.append(segment)

    def coverage(self, last_step: int) -> dict[str, Any] | None:
        """Which probes ran on which steps, when that changed at a resume (None otherwise)."""
        if len({tuple(s["probes"]) for s in self.segments}) < 2:
            return None
        return {"steps": int(last_step), "segments": self.segments, "note": PROBES_CHANGED}

    def last_values(self, prefixes: tuple[str, ...]) -> dict[str, float]:
        """The last logged value of every key that starts with one of ``prefixes``."""
        last: dict[str, float] = {}
        for _, row in sorted(self.rows.items()):
            last.update({k: v for k, v in row.items() if k.startswith(prefixes)})
        return last

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
        return {"columns": columns, "segments": self.segments}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.segments = list(state_dict.get("segments", []))  # none before optprobe 0.3
        self.rows = {}
        for key, (steps, values) in state_dict["columns"].items():
            for step, value in zip(steps, values):
                self.rows.setdefault(step, {})[key] = value
