"""The report's words: number formatting and the answer sentences (one per optimizer of the
comparison table, one on the constant-performance correlations)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "answer_sentences",
    "cell",
    "correlation_sentence",
    "excludes_zero",
    "frame",
    "num",
    "optimizer_sentence",
    "pct",
    "pct_interval",
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

_PERFORMANCE_NAMES = {
    "final_train_loss": "final training loss",
    "steps_to_target": "steps to the target loss",
    "final_val_loss": "final validation loss",
    "final_val_acc": "final validation accuracy",
}

_MAX_LISTED = 5  # robust correlations named in the answer


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


def _pretty_optimizer(name) -> str:
    s = str(name)
    return _OPTIMIZER_NAMES.get(s.lower(), s)


# --------------------------------------------------------------------------------------------
# the answer in words


def _clauses(row: Mapping) -> list[str]:
    def part(col: str) -> str | None:
        if not math.isfinite(num(row.get(col))):
            return None
        return pct_interval(row.get(col), row.get(f"{col}_low"), row.get(f"{col}_high"))

    smooth, conv = part("smoothness_predicts"), part("convexity_holds")
    conv_old, ref = part("convexity_old_holds"), part("ref_convexity_holds")
    clauses = []
    if smooth:
        clauses.append(f"L-smoothness predicted the progress on {smooth} of probed steps")
    if conv and conv_old:
        clauses.append(
            f"convexity along the step held on {conv} (seen from x_{{t+1}}) and on {conv_old} "
            "(seen from x_t)"
        )
    elif conv:
        clauses.append(f"convexity along the step held on {conv} (seen from x_{{t+1}})")
    elif conv_old:
        clauses.append(f"convexity along the step held on {conv_old} (seen from x_t)")
    if ref:
        clauses.append(f"convexity with respect to the reference point held on {ref}")
    return clauses


def _contrast(row: Mapping) -> str:
    """Whether the smoothness and convexity intervals are apart, and which way."""
    ends = [
        num(row.get(f"{c}_{end}"))
        for c in ("smoothness_predicts", "convexity_holds")
        for end in ("low", "high")
    ]
    if not all(math.isfinite(v) for v in ends):
        return ""
    s_lo, s_hi, c_lo, c_hi = ends
    if c_lo > s_hi:
        return (
            " Convexity along the step held clearly more often than L-smoothness predicted "
            "progress (the intervals do not overlap), as the reference study reports."
        )
    if s_lo > c_hi:
        return (
            " L-smoothness predicted progress clearly more often than convexity along the "
            "step held (the intervals do not overlap), unlike the reference study."
        )
    return " The two intervals overlap: no clear difference between the two analyses."


def optimizer_sentence(row: Mapping) -> str:
    """One or two sentences on one optimizer's row of the comparison table."""
    name = _pretty_optimizer(row.get("optimizer", "?"))
    n_runs = num(row.get("n_runs"))
    head = (
        f"{name} ({int(n_runs)} run{'s' if n_runs != 1 else ''})" if math.isfinite(n_runs) else name
    )
    clauses = _clauses(row)
    if not clauses:
        return f"{head}: no assumption was measured."
    both = all(math.isfinite(num(row.get(c))) for c in ("smoothness_predicts", "convexity_holds"))
    return f"{head}: " + "; ".join(clauses) + "." + (_contrast(row) if both else "")


def _describe_correlation(r) -> str:
    perf = _PERFORMANCE_NAMES.get(str(r.get("performance")), str(r.get("performance")))
    n = num(r.get("n"))
    n_txt = f", n = {int(n)}" if math.isfinite(n) else ""
    return (
        f"{r.get('constant')} with {perf} (ρ = {num(r.get('rho')):.2f} "
        f"[{num(r.get('ci_low')):.2f}, {num(r.get('ci_high')):.2f}]{n_txt})"
    )


def correlation_sentence(correlations: pd.DataFrame | None) -> str:
    """Whether any fitted constant's Spearman correlation with performance is robust."""
    corr = frame(correlations)
    if corr.empty or not {"rho", "ci_low", "ci_high"} <= set(corr.columns):
        return "No correlation between a fitted constant and performance was computed."
    robust = corr[[excludes_zero(lo, hi) for lo, hi in zip(corr["ci_low"], corr["ci_high"])]]
    total = len(corr)
    if robust.empty:
        text = (
            f"None of the {total} Spearman correlation{'s' if total != 1 else ''} between a fitted "
            "constant and a performance measure has a 95% interval that excludes 0"
        )
        rho_abs = pd.to_numeric(corr["rho"], errors="coerce").abs()
        if rho_abs.notna().any():
            text += f"; the strongest is {_describe_correlation(corr.loc[rho_abs.idxmax()])}"
        text += (
            ". No fitted constant predicts performance robustly, as the reference study reports."
        )
    else:
        order = pd.to_numeric(robust["rho"], errors="coerce").abs().sort_values(ascending=False)
        listed = "; ".join(_describe_correlation(robust.loc[i]) for i in order.index[:_MAX_LISTED])
        if len(order) > _MAX_LISTED:
            listed += f"; and {len(order) - _MAX_LISTED} more (see the table below)"
        text = (
            f"{len(robust)} of {total} Spearman correlations between a fitted constant and a "
            f"performance measure have a 95% interval that excludes 0: {listed}."
        )
    if "n" in corr.columns:
        n_max = pd.to_numeric(corr["n"], errors="coerce").max()
        if math.isfinite(num(n_max)) and n_max < 10:
            text += f" With at most {int(n_max)} runs per correlation the intervals are rough."
    return text


def answer_sentences(comparison: pd.DataFrame | None, correlations: pd.DataFrame | None):
    """The report's "answer": one sentence per optimizer, then one on the correlations."""
    comp = frame(comparison)
    sentences = []
    if comp.empty or "optimizer" not in comp.columns:
        sentences.append("No optimizer comparison was available.")
    else:
        sentences += [optimizer_sentence(row.to_dict()) for _, row in comp.iterrows()]
    sentences.append(correlation_sentence(correlations))
    return sentences
