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

from optprobe.analysis.columns import finite, finite_values, present, rows
from optprobe.analysis.fits import interleaved_split
from optprobe.analysis.run_constants import (
    hessian_sources,
    local_smoothness,
    max_origin,
    path_origin,
    path_smoothness,
)
from optprobe.analysis.run_intervals import run_interval
from optprobe.analysis.stats import pinball_loss, quantile_regression_line
from optprobe.assumptions import GEOMETRY_SUFFIX, SCHEMES, Variant, all_variants
from optprobe.estimators.identities import descent_bound

CONFIDENCE = 0.95
"""Confidence level of the per-run interval reported with every fraction."""

NULL_PERMUTATIONS = 19
"""Random permutations behind a fitted form's null (19: the smallest permutation p is 0.05)."""

NO_NULL = "none: a fixed inequality with no fitted constant (the registry's controls test it)"
"""The null label of sign checks."""

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

    The null baseline (a verdict that cannot fail is not evidence): ``null_method`` names it,
    ``null_fraction`` is the fraction it gives on the same checked steps, and ``informative``
    whether the verdict beats it (None, with ``null_method`` saying so, where there is none).
    Fitted forms hold on about q of the checked steps by construction, so for them a held
    fraction near q says nothing; :func:`fitted_form` describes their nulls. ``decomposition``
    (the descent bound): the verdict's two conditions counted apart
    (:func:`descent_decomposition`).
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
    null_method: str = ""
    null_fraction: float | None = None
    informative: bool | None = None
    decomposition: dict[str, float] = field(default_factory=dict)


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
            notes[f"{prefix}/path"] = f"L = {path:.4g}, {path_origin(df, prefix)}"
        out, notes = _with_path_bound_P(out, notes, prefix)
        out, notes = _with_hessian_bounds(out, notes, prefix)
        local = local_smoothness(df, prefix)
        if local is not None:
            out[f"{prefix}/descent_bound_local"] = descent_bound(lin, norm, local[0])
            notes[f"{prefix}/local"] = local[1]
    return out, notes


def _with_hessian_bounds(
    df: pd.DataFrame, notes: dict[str, str], prefix: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The ``hessian`` descent bounds: L = the run's max of ``curv/lambda_max`` alone
    (``<prefix>/descent_bound_hessian``) and, in the optimizer's norm, of
    ``curv/precond_lambda_max`` (``_P``, where ``update_norm_P`` was logged)."""
    lin = df[f"{prefix}/lin_old"].to_numpy(float)
    for suffix, word in (("", "L"), (GEOMETRY_SUFFIX, "L_P")):
        sources = hessian_sources(df, suffix)
        norm_key = f"{prefix}/update_norm{suffix}"
        if not sources or not present(df, norm_key):
            continue
        hessian = float(finite_values(df, sources[0]).max())
        norm = df[norm_key].to_numpy(float)
        df[f"{prefix}/descent_bound_hessian{suffix}"] = descent_bound(lin, norm, hessian)
        where = f"{prefix}/hessian" + ("/optimizer" if suffix else "")
        notes[where] = f"{word} = {hessian:.4g}, {max_origin(df, sources)}"
    return df, notes


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
    origin = path_origin(df, prefix, GEOMETRY_SUFFIX)
    notes[f"{prefix}/path/optimizer"] = (
        f"L_P = {path:.4g}, {origin} (smooth_lip_P: the dual-norm ratio in the optimizer's norm)"
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
    decomposition = {}
    if variant.assumption.id == "descent_bound":
        decomposition = descent_decomposition(values, scored, int(np.count_nonzero(held)))
    elif variant.assumption.id == "ref_gap":
        decomposition = phase_fractions(held)
    return _verdict(
        variant,
        held,
        no_progress=no_progress,
        sum_lhs=sum_lhs,
        sum_rhs=sum_rhs,
        sum_held=sum_held,
        note=note,
        null_method=NO_NULL,
        decomposition=decomposition,
    )


PHASES = ("early", "middle", "late")
"""Thirds of the scored steps, in step order."""


def phase_fractions(held: np.ndarray) -> dict[str, float]:
    """The fraction held on each third of the scored steps (step order). Convexity towards x*
    measures closeness to the run's end point: late steps are near x* by construction, so
    a run-wide fraction mixes a test (early) with a tautology (late)."""
    parts = np.array_split(np.asarray(held, dtype=bool), len(PHASES))
    return {
        name: float(part.mean()) if part.size else float("nan") for name, part in zip(PHASES, parts)
    }


def descent_decomposition(values: dict, scored: np.ndarray, held: int) -> dict[str, float]:
    """The descent-bound verdict's two conditions, counted on the scored steps (D_t < 0):
    ``bound_valid``, D_t ≤ bound + tol (L is large enough along the step), and
    ``predicts_decrease``, bound < 0, which is exactly L < 2|⟨g_t, Δ_t⟩| / ‖Δ_t‖² (the
    curvature against the effective step size; for SGD 2/η). Where the bound is valid on
    every scored step the verdict *is* that step-size condition. ``fraction_of_probed``: held
    over every probed step, the steps without progress (set apart) counted as not held."""
    bound = np.asarray(values["step/descent_bound"], dtype=float)[scored]
    change = np.asarray(values["step/loss_change"], dtype=float)[scored]
    tol = np.broadcast_to(values["step/float_tol"], scored.shape)[scored]
    probed = int(scored.size)
    return {
        "scored": int(bound.size),
        "bound_valid": int(np.count_nonzero(bound >= change - tol)),
        "predicts_decrease": int(np.count_nonzero(bound < 0)),
        "fraction_of_probed": held / probed if probed else float("nan"),
    }


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


def _check_loss(bound: Callable[[np.ndarray], np.ndarray], x, y, q: float) -> float:
    """Pinball loss at quantile q of ``y`` against the bound (lower: a tighter q-bound)."""
    return pinball_loss(y - np.asarray(bound(x), dtype=float), q)


def _covered(bound: Callable[[np.ndarray], np.ndarray], x, y) -> np.ndarray:
    level = np.asarray(bound(x), dtype=float)
    return y <= level + _FIT_RTOL * np.abs(level)


def _line_null(x, y, fit_idx, check_idx, q: float) -> dict:
    """The nulls of a line ``y <= c0 + c1 x``: a constant-only fit (coverage and pinball loss
    on the checking blocks) and the line refitted with x permuted among the steps
    (``NULL_PERMUTATIONS`` seeded draws). Informative when the line's out-of-sample pinball
    loss is below the constant's and below every permuted line's."""
    line = _line_fit(q)(x[fit_idx], y[fit_idx])
    const = _constant_fit(q)(x[fit_idx], y[fit_idx])
    xc, yc = x[check_idx], y[check_idx]
    loss = _check_loss(line, xc, yc, q)
    rng = np.random.default_rng(0)
    permuted = []
    for _ in range(NULL_PERMUTATIONS):
        xp = rng.permutation(x)
        fit = _line_fit(q)(xp[fit_idx], y[fit_idx])
        permuted.append(_check_loss(fit, xp[check_idx], yc, q))
    beats = loss < _check_loss(const, xc, yc, q) and loss < min(permuted)
    return {
        "null_method": (
            "constant-only fit (null_fraction: its coverage); informative when the line's "
            f"out-of-sample pinball loss beats it and {NULL_PERMUTATIONS} lines fitted on a "
            "permuted covariate"
        ),
        "null_fraction": float(np.mean(_covered(const, xc, yc))),
        "informative": bool(beats),
    }


def _constant_null(y, q: float, observed: float) -> dict:
    """The null of a constant ``y <= c``: the same fit with the steps' order permuted
    (``NULL_PERMUTATIONS`` seeded draws), which covers about q of the checked steps by
    construction. Informative (the level drifts along the run) when the observed coverage
    lies outside the permuted coverages' range."""
    rng = np.random.default_rng(0)
    fit_idx, check_idx = interleaved_split(y.size)
    shuffled = []
    for _ in range(NULL_PERMUTATIONS):
        yp = rng.permutation(y)
        bound = _constant_fit(q)(yp[fit_idx], yp[fit_idx])
        shuffled.append(float(np.mean(_covered(bound, yp[check_idx], yp[check_idx]))))
    return {
        "null_method": (
            f"the same fit on {NULL_PERMUTATIONS} permutations of the steps' order (null_fraction:"
            " their median coverage, about q by construction); informative when the coverage"
            " lies outside their range"
        ),
        "null_fraction": float(np.median(shuffled)),
        "informative": bool(observed < min(shuffled) or observed > max(shuffled)),
    }


def fitted_form(df: pd.DataFrame, variant: Variant, q: float) -> AssumptionVerdict | None:
    """Constants fitted at quantile q on the even interleaved blocks of the probed steps (in
    step order, ``fits.interleaved_split``), the odd blocks counted on or under the fitted
    bound: ``y <= c`` without an x key, else ``y <= c0 + c1 x``. None with fewer than two
    probed steps. Each carries its null (:func:`_line_null`, :func:`_constant_null`)."""
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
    held = _covered(bound, x[check_idx], y[check_idx])
    if x_key is None:
        null = _constant_null(y, q, float(np.mean(held)))
    else:
        null = _line_null(x, y, fit_idx, check_idx, q)
    return _verdict(variant, held, **null)


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
