"""The report's words: number formatting and the answer sentences (one per setting ×
optimizer of the run-level comparison table, one on the constant-performance correlations)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from optprobe.analysis.correlations import correlation_note

__all__ = [
    "answer_sentences",
    "cell",
    "correlation_sentence",
    "excludes_zero",
    "frame",
    "num",
    "pair_sentence",
    "pct",
    "pct_interval",
    "pretty_optimizer",
]

_OPTIMIZER_NAMES = {
    "sgd": "SGD",
    "sgdm": "SGDM",
    "adam": "Adam",
    "adamw": "AdamW",
    "lion": "Lion",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
}


# --------------------------------------------------------------------------------------------
# formatting


def num(x) -> float:
    """``x`` as a float, NaN when it is not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def pct(x) -> str:
    """``12%``, or ``n/a`` when ``x`` is missing."""
    v = num(x)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.0f}%"


def pct_interval(value, low, high) -> str:
    """``12% [8–17%]`` (the interval only where both ends are finite)."""
    v, lo, hi = num(value), num(low), num(high)
    if not math.isfinite(v):
        return "n/a"
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{100 * v:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}%]"
    return f"{100 * v:.0f}%"


def cell(x) -> str:
    """A table cell: numbers to 4 significant digits, missing values as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            return "—" if math.isnan(float(x)) else str(float(x))
        if float(x).is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{float(x):.4g}"
    try:
        if pd.isna(x):
            return "—"
    except (TypeError, ValueError):
        pass
    return str(x)


def frame(df) -> pd.DataFrame:
    """``df`` when it is a DataFrame, else an empty one."""
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame()


def excludes_zero(low, high) -> bool:
    """Whether the interval [low, high] is finite and lies on one side of 0."""
    lo, hi = num(low), num(high)
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def pretty_optimizer(name) -> str:
    """The optimizer's display name (``adamw`` -> ``AdamW``); unknown names as given."""
    s = str(name)
    return _OPTIMIZER_NAMES.get(s.lower(), s)


# --------------------------------------------------------------------------------------------
# the answer in words


def _entry_clause(row: Mapping) -> str:
    runs = int(num(row.get("runs"))) if math.isfinite(num(row.get("runs"))) else 0
    interval = ""
    if math.isfinite(num(row.get("ci_low"))) and math.isfinite(num(row.get("ci_high"))):
        interval = f" [{pct(row.get('ci_low'))}–{pct(row.get('ci_high'))}]"
    return (
        f"{row.get('assumption_label')}: {pct(row.get('mean_run_fraction'))}{interval} "
        f"({row.get('label')}; pooled steps {pct(row.get('pooled_fraction'))}, "
        f"{runs} run{'s' if runs != 1 else ''})"
    )


def pair_sentence(rows: pd.DataFrame) -> str:
    """One sentence on one setting × optimizer of the comparison table: each entry's mean run
    fraction, its t interval over runs, its label and the pooled fraction."""
    first = rows.iloc[0]
    name = f"{first.get('setting')}, {pretty_optimizer(first.get('optimizer'))}"
    excluded = int(num(first.get("runs_excluded"))) if "runs_excluded" in rows else 0
    if excluded:
        name += f" ({excluded} run{'s' if excluded != 1 else ''} excluded)"
    clauses = [_entry_clause(r) for _, r in rows.iterrows()]
    return (
        f"{name}: mean over runs of the fraction of probed steps held, with its 95% t interval "
        "over runs: " + "; ".join(clauses) + "."
    )


def correlation_sentence(correlations: pd.DataFrame | None) -> str:
    """The correlations in one plain sentence (see ``correlations.correlation_note``)."""
    corr = frame(correlations)
    if not corr.empty and not {"n", "tests", "significant"} <= set(corr.columns):
        return "The correlation table lacks permutation p-values; rerun the analysis."
    return correlation_note(corr)


def answer_sentences(comparison: pd.DataFrame | None, correlations: pd.DataFrame | None):
    """The report's "answer": one sentence per setting × optimizer, then the correlations."""
    comp = frame(comparison)
    sentences = []
    if comp.empty or not {"setting", "optimizer", "assumption_label"} <= set(comp.columns):
        sentences.append("No optimizer comparison was available.")
    else:
        for _, rows in comp.groupby(["setting", "optimizer"], sort=False):
            sentences.append(pair_sentence(rows))
    sentences.append(correlation_sentence(correlations))
    return sentences
