"""Which runs the cross-run analysis may use: every run gets ``included`` and, when excluded,
the reasons (``exclusion_reason``) and the facts behind them (``exclusion_detail``).

An excluded run is listed in runs.csv and in the report, and never enters the comparison, a
finding or a correlation. The rules, each a reason of ``REASONS``:

- ``failed``: the job's status is ``failed`` (an exception; W&B: crashed, failed, killed).
- ``incomplete``: the job did not finish: status ``running``, ``preempted at step k``,
  ``interrupted``..., no summary.json (``missing``) or an unreadable one.
- ``no metrics``: no metrics.csv (W&B: no history rows), or an empty one.
- ``truncated``: metrics.csv is cut inside a row, has a row with the wrong number of
  fields, cannot be parsed, or its last step is more than ``trainer.log_every_n_steps``
  (default 50) steps before the run's final ``global_step``.
- ``non-finite``: the training loss became NaN or infinite (status ``stopped: non-finite
  loss``, summary ``non_finite_loss``, a non-finite ``train/loss`` in metrics.csv).
- ``diverged``: the final training loss (mean of the last 10 logged steps) is more than
  ``DIVERGED_FACTOR`` = 10 times the initial one (the first logged training loss, at the
  initial parameters: with lr 1e6 the second step's loss is already 1e6 times larger).
- ``replay mismatch``: the reference probe's replay did not end at x*
  (summary ``probes.<name>.replay.matches`` false): its ``ref/*`` values compare against a
  point of another trajectory.
- ``probes changed``: the job was resumed with other probes (summary
  ``verdicts.coverage``): its verdicts cover only part of the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from optprobe.analysis.metrics_file import LOSS_KEY, Problem
from optprobe.analysis.runs import RunRecord

__all__ = [
    "DIVERGED_FACTOR",
    "REASONS",
    "exclusion_problems",
    "initial_train_loss",
    "status_columns",
]

REASONS: Mapping[str, str] = {
    "failed": "the job ended with an error",
    "incomplete": "the job did not finish (running, preempted, interrupted, no summary.json)",
    "no metrics": "no metrics.csv or W&B history, or an empty one",
    "truncated": "metrics.csv is cut short or damaged",
    "non-finite": "the training loss became NaN or infinite",
    "diverged": "the final training loss is over 10x the initial one",
    "replay mismatch": "the reference replay did not end at x*",
    "probes changed": "resumed with other probes: the verdicts cover part of the run",
}
"""Exclusion reason -> what it means (the report's legend)."""

DIVERGED_FACTOR = 10.0
DEFAULT_LOG_EVERY = 50  # Lightning's default trainer.log_every_n_steps


def initial_train_loss(history: pd.DataFrame) -> float:
    """The first finite training loss the run logged (NaN without any)."""
    if LOSS_KEY not in history:
        return math.nan
    loss = history[LOSS_KEY].to_numpy(float)
    loss = loss[np.isfinite(loss)]
    return float(loss[0]) if loss.size else math.nan


def _status_problems(status: str, summary: Mapping[str, Any]) -> list[Problem]:
    low = status.lower()
    if low == "completed":
        return []
    if low.startswith("failed"):
        error = summary.get("error")
        return [("failed", f"status {status!r}" + (f": {error}" if error else ""))]
    if "non-finite" in low:
        return [("non-finite", f"status {status!r}")]
    return [("incomplete", f"status {status!r}")]


def _last_step(history: pd.DataFrame) -> float:
    if "step" not in history or history.empty:
        return math.nan
    steps = pd.to_numeric(history["step"], errors="coerce").dropna()
    return float(steps.max()) if len(steps) else math.nan


def _truncation(record: RunRecord) -> list[Problem]:
    """The history ends well before the run's last step."""
    global_step = record.summary.get("global_step")
    last = _last_step(record.history)
    if not isinstance(global_step, (int, float)) or math.isnan(last):
        return []
    every = record.config.get("trainer.log_every_n_steps") or DEFAULT_LOG_EVERY
    if last < float(global_step) - float(every):
        return [("truncated", f"metrics end at step {last:g}; the run reached {global_step:g}")]
    return []


def _loss_problems(record: RunRecord, final_loss: float) -> list[Problem]:
    out: list[Problem] = []
    guard = record.summary.get("non_finite_loss")
    if guard:
        out.append(("non-finite", f"non-finite training loss from step {guard.get('first_step')}"))
    initial = initial_train_loss(record.history)
    if math.isfinite(initial) and not math.isfinite(final_loss) and not math.isnan(final_loss):
        out.append(("non-finite", f"final training loss {final_loss}"))
    elif math.isfinite(initial) and initial > 0 and final_loss > DIVERGED_FACTOR * initial:
        out.append(("diverged", f"final training loss {final_loss:.3g} vs initial {initial:.3g}"))
    return out


def _replay_problems(summary: Mapping[str, Any]) -> list[Problem]:
    probes = summary.get("probes") or {}
    out: list[Problem] = []
    for name, probe in probes.items() if isinstance(probes, Mapping) else ():
        replay = probe.get("replay") if isinstance(probe, Mapping) else None
        if isinstance(replay, Mapping) and replay.get("matches") is False:
            rel = replay.get("final_rel_dist")
            where = f" ({rel:.3g} relative to |x*|)" if isinstance(rel, (int, float)) else ""
            out.append(("replay mismatch", f"probe {name}: the replay did not end at x*{where}"))
    return out


def _coverage_problems(summary: Mapping[str, Any]) -> list[Problem]:
    verdicts = summary.get("verdicts")
    coverage = verdicts.get("coverage") if isinstance(verdicts, Mapping) else None
    if not isinstance(coverage, Mapping):
        return []
    segments = [
        f"{', '.join(s.get('probes') or []) or 'no probes'} from step {s.get('first_step')}"
        for s in coverage.get("segments") or []
        if isinstance(s, Mapping)
    ]
    return [("probes changed", "; ".join(segments) or "the probes changed at a resume")]


def exclusion_problems(record: RunRecord, final_loss: float) -> list[Problem]:
    """Every reason to leave the run out, with its facts (empty: the run is included)."""
    problems = [*_status_problems(record.status, record.summary), *record.problems]
    if record.history.empty and not any(r == "no metrics" for r, _ in problems):
        problems.append(("no metrics", "no logged step"))
    problems += _truncation(record)
    problems += _loss_problems(record, final_loss)
    problems += _replay_problems(record.summary)
    problems += _coverage_problems(record.summary)
    return problems


def _join(items: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(items))


def status_columns(record: RunRecord, final_loss: float) -> dict[str, Any]:
    """runs.csv's status columns of one run: ``included``, ``exclusion_reason`` (reasons,
    ``; ``-separated, empty when included), ``exclusion_detail``, ``initial_train_loss``,
    ``last_logged_step`` and ``global_step`` (the summary's)."""
    problems = exclusion_problems(record, final_loss)
    global_step = record.summary.get("global_step")
    return {
        "included": not problems,
        "exclusion_reason": _join(r for r, _ in problems),
        "exclusion_detail": _join(d for _, d in problems),
        "initial_train_loss": initial_train_loss(record.history),
        "last_logged_step": _last_step(record.history),
        "global_step": float(global_step) if isinstance(global_step, (int, float)) else math.nan,
    }
