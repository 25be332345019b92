"""One verdict per assumption variant of the registry, from a run's metrics table.

Sign checks count, among the probed steps a variant scores (for the descent bound: the steps
that made progress, D_t < 0; the others are counted in ``no_progress``), those on which it
held, and also judge the summed version (the same predicate on the sums over every probed
step, e.g. Σ bound against Σ D_t). Fitted forms fit their constants at quantile q on the first
half of the probed steps and count the second half. Every fraction gets the per-run interval
of :mod:`optprobe.analysis.run_intervals` (the steps are autocorrelated).

The ``path`` and ``local`` descent bounds are not logged (they need the whole run): they are
added here as columns ``<prefix>/descent_bound_path`` and ``<prefix>/descent_bound_local``
from ``lin_old``, ``update_norm`` and the L of :mod:`optprobe.analysis.run_constants`; in the
optimizer's norm, ``<prefix>/descent_bound_path_P`` from ``update_norm_P`` and the run's max of
``smooth_lip_P`` and ``curv/precond_lambda_max``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optprobe.analysis.columns import finite, present, rows
from optprobe.analysis.fits import interleaved_split
from optprobe.analysis.run_constants import local_smoothness, path_smoothness, path_sources
from optprobe.analysis.run_intervals import run_interval
from optprobe.analysis.stats import quantile_regression_line
from optprobe.assumptions import GEOMETRY_SUFFIX, SCHEMES, Variant, all_variants
from optprobe.estimators.identities import descent_bound

CONFIDENCE = 0.95
"""Confidence level of the per-run interval reported with every fraction."""

# Relative slack when checking a value against a fitted bound, so that a point lying exactly on
# the fitted line (up to solver round-off) counts as covered.
_FIT_RTOL = 1e-7


@dataclass
class AssumptionVerdict:
    """How often one assumption variant held on one run.

    ``held`` of ``checked`` scored steps (``fraction``, NaN when nothing was checked) with the
    per-run interval ``ci_low``–``ci_high`` of ``interval_method``. ``id``: the verdict id
    (``optprobe.assumptions``); ``assumption``: the registry id; ``variant``: its axis values;
    ``headline``: at the first value of every axis but the scheme. ``no_progress``: probed
    steps set aside because D_t ≥ 0 (checks that predict progress; else None). ``sum_lhs``,
    ``sum_rhs``: the sums over the probed steps of the two sides of the inequality (lhs ≤ rhs,
    the assumption's ``sides``), and ``sum_held`` whether the summed version held (None when
    not judged). ``note``: how the variant was computed, where it matters (e.g. which L).
    """

    id: str
    assumption: str
    label: str
    held: int
    checked: int
    fraction: float
    ci_low: float
    ci_high: float
    interval_method: str
    variant: dict[str, str] = field(default_factory=dict)
    headline: bool = True
    no_progress: int | None = None
    sum_lhs: float | None = None
    sum_rhs: float | None = None
    sum_held: bool | None = None
    note: str = ""


def _verdict(variant: Variant, held: np.ndarray, **extra) -> AssumptionVerdict:
    n_held, n = int(np.count_nonzero(held)), int(held.size)
    interval = run_interval(held, CONFIDENCE)
    return AssumptionVerdict(
        id=variant.id,
        assumption=variant.assumption.id,
        label=variant.label,
        held=n_held,
        checked=n,
        fraction=n_held / n if n else float("nan"),
        ci_low=interval.low,
        ci_high=interval.high,
        interval_method=interval.method,
        variant=variant.variant,
        headline=variant.headline,
        **extra,
    )


# --------------------------------------------------------------------------- derived bounds


def with_derived_bounds(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``df`` with the ``path`` and ``local`` descent bounds of every scheme that logged the
    old-point keys, and a note per ``<prefix>/<L>`` saying what L was used."""
    out, notes = df.copy(), {}
    for prefix in SCHEMES.values():
        lin_key, norm_key = f"{prefix}/lin_old", f"{prefix}/update_norm"
        if not present(df, lin_key, norm_key):
            continue
        lin, norm = df[lin_key].to_numpy(float), df[norm_key].to_numpy(float)
        path = path_smoothness(df, prefix)
        if path is not None:
            out[f"{prefix}/descent_bound_path"] = descent_bound(lin, norm, path)
            notes[f"{prefix}/path"] = (
                f"L = {path:.4g}, the run's max of {' and '.join(path_sources(df, prefix))}"
            )
        out, notes = _with_path_bound_P(out, notes, prefix)
        local = local_smoothness(df, prefix)
        if local is not None:
            out[f"{prefix}/descent_bound_local"] = descent_bound(lin, norm, local[0])
            notes[f"{prefix}/local"] = local[1]
    return out, notes


def _with_path_bound_P(
    df: pd.DataFrame, notes: dict[str, str], prefix: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The ``path`` descent bound in the optimizer's norm, ``<prefix>/descent_bound_path_P``,
    where the run logged ``update_norm_P`` and ``smooth_lip_P`` (its note under
    ``<prefix>/path/optimizer``)."""
    norm_key = f"{prefix}/update_norm{GEOMETRY_SUFFIX}"
    path = path_smoothness(df, prefix, GEOMETRY_SUFFIX) if present(df, norm_key) else None
    if path is None or not present(df, f"{prefix}/smooth_lip{GEOMETRY_SUFFIX}"):
        return df, notes
    lin, norm = df[f"{prefix}/lin_old"].to_numpy(float), df[norm_key].to_numpy(float)
    df[f"{prefix}/descent_bound_path{GEOMETRY_SUFFIX}"] = descent_bound(lin, norm, path)
    sources = " and ".join(path_sources(df, prefix, GEOMETRY_SUFFIX))
    notes[f"{prefix}/path/optimizer"] = (
        f"L_P = {path:.4g}, the run's max of {sources} (smooth_lip_P: the dual-norm ratio in "
        "the optimizer's norm)"
    )
    return df, notes


# --------------------------------------------------------------------------- sign checks


def _sides_sums(block: pd.DataFrame, variant: Variant) -> tuple[float | None, float | None]:
    sides = variant.assumption.sides
    if sides is None or not all(variant.key(k) in block.columns for k in sides):
        return None, None
    lhs, rhs = (block[variant.key(k)].to_numpy(float) for k in sides)
    if np.isnan(lhs).any() or np.isnan(rhs).any():
        return None, None
    return float(lhs.sum()), float(rhs.sum())


def sign_check(df: pd.DataFrame, variant: Variant, note: str = "") -> AssumptionVerdict | None:
    """The variant on every probed step where its keys were logged (None when never): held
    among the scored steps, and summed over all of them."""
    keys = [variant.key(k) for k in variant.inputs]
    if not present(df, *keys):
        return None
    block = df[df[keys].notna().all(axis=1)]
    logged = {k: block[k].to_numpy(float) for k in keys}
    tol_key = variant.tolerance_key
    if tol_key in block.columns:
        logged[tol_key] = block[tol_key].fillna(0.0).to_numpy(float)
    values = variant.base_values(logged)
    values[variant.assumption.tolerance_key] = np.broadcast_to(
        values[variant.assumption.tolerance_key], (len(block),)
    )
    scored = np.broadcast_to(np.asarray(variant.scored(values), dtype=bool), (len(block),))
    held = np.asarray(variant.held(values), dtype=bool)[scored]
    sums = {k: float(np.sum(v)) for k, v in values.items()}
    sum_held = bool(variant.held(sums)) if bool(variant.scored(sums)) else None
    sum_lhs, sum_rhs = _sides_sums(block, variant)
    no_progress = None
    if variant.assumption.progress_key is not None:
        no_progress = int(np.count_nonzero(~scored))
    return _verdict(
        variant,
        held,
        no_progress=no_progress,
        sum_lhs=sum_lhs,
        sum_rhs=sum_rhs,
        sum_held=sum_held,
        note=note,
    )


# --------------------------------------------------------------------------- fitted forms

# A fit takes (x, y) of the fitting half and returns a function bound(x) of the checked half.
_Fit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray] | None]


def _line_fit(q: float) -> _Fit:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        xf, yf = finite(x, y)
        if xf.size == 0:
            return None
        a, b = quantile_regression_line(xf, yf, q)
        return lambda xs: a + b * xs

    return fit


def _constant_fit(q: float) -> _Fit:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        (yf,) = finite(y)
        if yf.size == 0:
            return None
        level = float(np.quantile(yf, q))
        return lambda xs: np.full(xs.shape, level)

    return fit


def fitted_form(df: pd.DataFrame, variant: Variant, q: float) -> AssumptionVerdict | None:
    """Constants fitted at quantile q on the even interleaved blocks of the probed steps (in
    step order, ``fits.interleaved_split``), the odd blocks counted on or under the fitted
    bound: ``y <= c`` without an x key, else ``y <= c0 + c1 x``. None with fewer than two
    probed steps."""
    x_key, y_key, _ = variant.assumption.fit
    if not present(df, *(variant.key(k) for k in (x_key, y_key) if k is not None)):
        return None
    if x_key is None:
        (y,) = rows(df, variant.key(y_key))
        x, fit = y, _constant_fit(q)
    else:
        x, y = rows(df, variant.key(x_key), variant.key(y_key))
        fit = _line_fit(q)
    fit_idx, check_idx = interleaved_split(x.size)
    bound = fit(x[fit_idx], y[fit_idx]) if fit_idx.size and check_idx.size else None
    if bound is None:
        return None
    level = np.asarray(bound(x[check_idx]), dtype=float)
    return _verdict(variant, y[check_idx] <= level + _FIT_RTOL * np.abs(level))


# --------------------------------------------------------------------------- all variants


def variant_verdicts(df: pd.DataFrame, q: float) -> list[AssumptionVerdict]:
    """One verdict per registry variant whose keys the run logged, in registry order."""
    df, notes = with_derived_bounds(df)
    out: list[AssumptionVerdict | None] = []
    for variant in all_variants():
        if variant.assumption.kind == "sign":
            geometry = "/optimizer" if variant.get("geometry") == "optimizer" else ""
            note = notes.get(f"{variant.prefix}/{variant.get('L')}{geometry}", "")
            out.append(sign_check(df, variant, note))
        else:
            out.append(fitted_form(df, variant, q))
    return [v for v in out if v is not None]
