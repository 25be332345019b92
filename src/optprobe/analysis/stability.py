"""Where a run sat relative to its optimizer's edge of stability (metrics.md §1a, last lines).

Per firing of the curvature probe, the *stability ratio*

    r_t = curv/sharpness_ratio / curv/stability_threshold
        = η_t · λ_max(P_t⁻¹ H_t) / threshold        (dimensionless; 1 = the edge)

with η_t the step size of the step about to be taken, λ_max that of the preconditioned
Hessian for optimizers with a diagonal preconditioner (Adam-type: P = diag(√v̂ + ε)) and of H
itself otherwise, and the threshold from :mod:`optprobe.optim.registry` (2 for SGD, 2 + 2β for
heavy ball, (2 + 2β₁)/(1 − β₁) for Adam-type). The probe logs the product η_t·λ_max itself
(``curv/sharpness_ratio``, with the lr the optimizer will use), so nothing is re-aligned here.
On a quadratic the iteration diverges once r_t > 1.

Per run (columns of runs.csv): the median of r_t over the firings (``stability:median``), its
quartiles (``stability:q25``, ``stability:q75``), the fraction of firings with r_t > 1
(``stability:above_1``) and the number of firings used (``stability:firings``). A run without a
defined threshold (Lion, Muon, Schedule-Free, ...), or without the keys, gets NaN there and the
reason in ``stability:excluded``; so does a run whose curvature HVPs ran on a subset of the
batch (``curv/hvp_examples``): its λ_max is another function's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from optprobe.analysis.columns import finite, finite_values, rows
from optprobe.analysis.run_constants import HVP_EXAMPLES_KEY

RATIO_KEY = "curv/sharpness_ratio"
THRESHOLD_KEY = "curv/stability_threshold"
MEDIAN, Q25, Q75 = "stability:median", "stability:q25", "stability:q75"
ABOVE, FIRINGS, EXCLUDED = "stability:above_1", "stability:firings", "stability:excluded"
COLUMNS = (MEDIAN, Q25, Q75, ABOVE, FIRINGS, EXCLUDED)
DESCRIPTION = (
    "stability ratio = η·λ_max / threshold per curvature-probe firing (λ_max of P⁻¹H for "
    "Adam-type optimizers, of H otherwise; threshold from the optimizer table: 2 for SGD, "
    "2 + 2β heavy ball, (2 + 2β₁)/(1 − β₁) Adam-type); 1 is the edge of stability"
)


def _undefined_reason(summary: Mapping[str, Any]) -> str:
    """Why the curvature probe logged a NaN threshold, from the job's summary.json."""
    for probe in (summary.get("probes") or {}).values():
        if isinstance(probe, Mapping) and probe.get("threshold_undefined"):
            return f"no stability threshold ({probe['threshold_undefined']})"
    return f"no stability threshold ({THRESHOLD_KEY} is NaN on every firing)"


def stability_ratios(
    history: pd.DataFrame, summary: Mapping[str, Any] | None = None
) -> np.ndarray | str:
    """The stability ratio of every curvature firing in step order (dimensionless), or the
    reason there is none (a string). Firings with a NaN or infinite threshold are left out."""
    if RATIO_KEY not in history.columns or history[RATIO_KEY].notna().sum() == 0:
        return f"{RATIO_KEY} not logged (no curvature probe, or no optimizer step probed)"
    if THRESHOLD_KEY not in history.columns:
        return f"{THRESHOLD_KEY} not logged"
    if finite_values(history, HVP_EXAMPLES_KEY) is not None:
        return (
            f"curvature on a subset of the batch ({HVP_EXAMPLES_KEY}, probes.curvature."
            "hvp_examples): the stability ratio is defined by the step's whole batch"
        )
    fired = pd.to_numeric(history[RATIO_KEY], errors="coerce").notna()
    threshold = pd.to_numeric(history[THRESHOLD_KEY], errors="coerce")[fired]
    if not np.isfinite(threshold.to_numpy(float)).any():
        return _undefined_reason(summary or {})
    product, threshold = finite(*rows(history, RATIO_KEY, THRESHOLD_KEY))
    return product / threshold


def stability_columns(
    history: pd.DataFrame, summary: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The run's ``stability:*`` columns (see the module docstring)."""
    ratios = stability_ratios(history, summary)
    if isinstance(ratios, str) or ratios.size == 0:
        reason = ratios if isinstance(ratios, str) else "no finite stability ratio"
        return {**{c: math.nan for c in COLUMNS[:-2]}, FIRINGS: 0, EXCLUDED: reason}
    q25, median, q75 = np.quantile(ratios, [0.25, 0.5, 0.75])
    return {
        MEDIAN: float(median),
        Q25: float(q25),
        Q75: float(q75),
        ABOVE: float(np.mean(ratios > 1.0)),
        FIRINGS: int(ratios.size),
        EXCLUDED: "",
    }


def has_stability(runs: pd.DataFrame | None) -> bool:
    """Whether a runs table holds a stability ratio for at least one run."""
    return runs is not None and MEDIAN in runs.columns and runs[MEDIAN].notna().any()
