"""Per setting × optimizer × verdict entry: the run-level evidence (comparison.csv).

The unit of evidence is the run (docs/metrics.md §5): consecutive probed steps are strongly
autocorrelated, so the steps of all runs pooled are not independent observations. For each
setting (model/data), optimizer and verdict key, over the *included* runs that checked it:

- ``mean_run_fraction``: the mean of the per-run fractions held (each run counts once);
- ``ci_low``, ``ci_high``: the 95% Student-t interval of that mean over runs (mean ±
  t_{n-1} s/√n, clipped to [0, 1]); NaN below 2 runs;
- ``pooled_fraction`` (with ``pooled_held``/``pooled_checked``): held over checked steps of
  all its runs pooled, shown for reference, never used as an interval;
- ``label``: whether the entry *held on most probed steps* (mean run fraction above
  ``THRESHOLD`` = 50%): ``supported`` when the whole interval is above it, ``not supported``
  when it is below, ``inconclusive`` when it straddles it, ``insufficient runs`` with fewer
  than ``min_runs`` (default ``MIN_RUNS`` = 3) runs, and ``uninformative`` for an entry with
  a null baseline (the fitted forms, which hold on about q of the steps by construction)
  that fewer than half of its runs beat;
- ``runs_informative``: the runs whose verdict beat its null (empty for entries without one,
  the sign checks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from optprobe.analysis.stats import t_interval
from optprobe.analysis.verdict_keys import KEY_COLUMN, finding_of, key_label

__all__ = [
    "COLUMNS",
    "CONFIDENCE",
    "INTERVAL",
    "LABELS",
    "MIN_RUNS",
    "THRESHOLD",
    "comparison",
    "interval_label",
    "run_fractions",
]

THRESHOLD = 0.5
"""'Most probed steps': a mean run fraction above this."""

MIN_RUNS = 3
"""Fewest included runs for a label other than ``insufficient runs``."""

CONFIDENCE = 0.95

INTERVAL = "95% t interval over runs of the per-run fractions"
"""What ``ci_low``/``ci_high`` are, for captions."""

SUPPORTED, NOT_SUPPORTED = "supported", "not supported"
INCONCLUSIVE, INSUFFICIENT = "inconclusive", "insufficient runs"
UNINFORMATIVE = "uninformative"
LABELS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, INSUFFICIENT, UNINFORMATIVE)

COLUMNS = (
    "setting",
    "optimizer",
    KEY_COLUMN,
    "assumption_label",
    "finding",
    "runs",
    "runs_excluded",
    "mean_run_fraction",
    "sd_run_fraction",
    "ci_low",
    "ci_high",
    "pooled_held",
    "pooled_checked",
    "pooled_fraction",
    "threshold",
    "runs_informative",
    "label",
)
"""comparison.csv's columns, in order (``runs_excluded``: runs of the setting × optimizer
left out by :mod:`optprobe.analysis.run_status`)."""


def interval_label(
    low: float, high: float, runs: int, min_runs: int = MIN_RUNS, above: bool = True
) -> str:
    """The label of a claim "the fraction is above ``THRESHOLD``" (``above=False``: below)
    from the run-level interval [low, high] of ``runs`` runs."""
    if runs < max(min_runs, 2) or not (math.isfinite(low) and math.isfinite(high)):
        return INSUFFICIENT
    if low > THRESHOLD:
        return SUPPORTED if above else NOT_SUPPORTED
    if high < THRESHOLD:
        return NOT_SUPPORTED if above else SUPPORTED
    return INCONCLUSIVE


def _fractions(rows: pd.DataFrame) -> np.ndarray:
    """Each run's own fraction held (its verdict's ``fraction``, else held / checked)."""
    held = pd.to_numeric(rows["held"], errors="coerce").to_numpy(float)
    checked = pd.to_numeric(rows["checked"], errors="coerce").to_numpy(float)
    if "fraction" in rows:
        return pd.to_numeric(rows["fraction"], errors="coerce").to_numpy(float)
    return held / checked


def _row(key: str, label: str | None, rows: pd.DataFrame, n_excluded: int, min_runs: int):
    rows = rows[pd.to_numeric(rows["checked"], errors="coerce").fillna(0) > 0]
    held = int(pd.to_numeric(rows["held"], errors="coerce").fillna(0).sum())
    checked = int(pd.to_numeric(rows["checked"], errors="coerce").sum())
    ti = t_interval(_fractions(rows), CONFIDENCE, bounds=(0.0, 1.0))
    label = interval_label(ti.low, ti.high, ti.n, min_runs)
    informative = _informative_runs(rows)
    if informative is not None and label != INSUFFICIENT and 2 * informative < ti.n:
        label = UNINFORMATIVE
    return {
        KEY_COLUMN: key,
        "assumption_label": key_label(key, label),
        "finding": finding_of(key) or "",
        "runs": ti.n,
        "runs_excluded": n_excluded,
        "mean_run_fraction": ti.mean,
        "sd_run_fraction": ti.sd,
        "ci_low": ti.low,
        "ci_high": ti.high,
        "pooled_held": held,
        "pooled_checked": checked,
        "pooled_fraction": held / checked if checked else math.nan,
        "threshold": THRESHOLD,
        "runs_informative": informative,
        "label": label,
    }


def _informative_runs(rows: pd.DataFrame) -> int | None:
    """How many runs beat their verdict's null (None when the entry has no null)."""
    if "informative" not in rows:
        return None
    flags = rows["informative"].dropna()
    return int(flags.astype(bool).sum()) if len(flags) else None


def comparison(runs: pd.DataFrame, verdicts: pd.DataFrame, min_runs: int = MIN_RUNS):
    """comparison.csv (``COLUMNS``): one row per setting × optimizer × verdict key that any run
    of the pair checked, from the included runs only (a pair whose runs are all excluded keeps
    its rows, with ``runs`` = 0 and ``insufficient runs``)."""
    if verdicts.empty or runs.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    info = runs[["run_id", "setting", "optimizer", "included"]]
    merged = verdicts.drop(columns=["included"], errors="ignore").merge(info, on="run_id")
    merged["_key"] = merged[KEY_COLUMN].astype(str)
    order = {k: i for i, k in enumerate(dict.fromkeys(merged["_key"]))}  # first-seen order
    out = []
    for (setting, optimizer), group in merged.groupby(["setting", "optimizer"], sort=True):
        pair = runs[(runs["setting"] == setting) & (runs["optimizer"] == optimizer)]
        n_excluded = int((~pair["included"].astype(bool)).sum())
        for key in sorted(set(group["_key"]), key=order.__getitem__):
            rows = group[group["_key"] == key]
            label = str(rows["label"].iloc[0]) if "label" in rows else None
            used = rows[rows["included"].astype(bool)]
            row = _row(key, label, used, n_excluded, min_runs)
            out.append({"setting": setting, "optimizer": optimizer, **row})
    table = pd.DataFrame(out, columns=list(COLUMNS))
    return table.astype({"runs": int, "runs_excluded": int, "pooled_held": int})


def run_fractions(verdicts: pd.DataFrame, run_ids: Sequence[str], key: str) -> np.ndarray:
    """The per-run fractions of ``key`` of the given runs (those that checked it)."""
    rows = verdicts[verdicts["run_id"].isin(run_ids) & (verdicts[KEY_COLUMN].astype(str) == key)]
    return _fractions(rows[pd.to_numeric(rows["checked"], errors="coerce").fillna(0) > 0])
