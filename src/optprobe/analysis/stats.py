"""Small statistics used by the verdicts and the cross-run analysis: Wilson intervals, the t
interval of a mean over runs, Spearman correlation with an exact (or Monte Carlo) permutation
p-value (never the t approximation, too optimistic on a handful of runs) and a paired
bootstrap interval, the Holm and Benjamini-Hochberg corrections, and a
linear quantile-regression line fitted as a linear program.

Pure numpy/scipy. The paired functions drop pairs where either input is NaN (the quantile line
also drops infinite values) before computing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import optimize
from scipy import stats as sps

__all__ = [
    "EXACT_MAX_N",
    "TInterval",
    "all_permutations",
    "average_ranks",
    "benjamini_hochberg",
    "bootstrap_ci",
    "holm",
    "min_exact_spearman_pvalue",
    "pinball_loss",
    "quantile_regression_line",
    "spearman",
    "spearman_permutation_pvalue",
    "t_interval",
    "wilson_interval",
]


def _two_sided_z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(held: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``held / n``.

    Returns ``(low, high)`` within [0, 1]; ``(nan, nan)`` when ``n == 0``.
    """
    if n < 0 or held < 0 or held > n:
        raise ValueError(f"need 0 <= held <= n, got held={held}, n={n}")
    if n == 0:
        return (float("nan"), float("nan"))
    z = _two_sided_z(confidence)
    p = held / n
    z2n = z * z / n
    denom = 1.0 + z2n
    center = (p + z2n / 2.0) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / denom
    low = 0.0 if held == 0 else max(0.0, center - half)  # exact at the edges
    high = 1.0 if held == n else min(1.0, center + half)
    return (float(low), float(high))


def _paired_finite(x, y) -> tuple[np.ndarray, np.ndarray]:
    """``x``, ``y`` as float arrays of equal length with NaN pairs removed."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the last axis, ties given the average of their ranks."""
    a = np.asarray(a, dtype=float)
    n = a.shape[-1]
    if n == 0:
        return a.copy()
    order = np.argsort(a, axis=-1, kind="mergesort")
    s = np.take_along_axis(a, order, axis=-1)
    pos = np.broadcast_to(np.arange(n), a.shape)
    differs = s[..., 1:] != s[..., :-1]
    edge = np.ones(a.shape[:-1] + (1,), dtype=bool)
    starts = np.concatenate([edge, differs], axis=-1)
    ends = np.concatenate([differs, edge], axis=-1)
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(
        np.minimum.accumulate(np.flip(np.where(ends, pos, n - 1), axis=-1), axis=-1), axis=-1
    )
    ranks = np.empty_like(s)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; NaN where either row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(average_ranks(x), average_ranks(y))


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties), in [-1, 1].

    NaN pairs are dropped; NaN when fewer than 3 pairs remain or either input is constant.
    """
    x, y = _paired_finite(x, y)
    if x.size < 3:
        return float("nan")
    return float(_spearman_rows(x, y))


def bootstrap_ci(
    x,
    y,
    statistic: Callable[[np.ndarray, np.ndarray], float] = spearman,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(x, y)`` by a paired bootstrap over the pairs (runs).

    Pairs are resampled together with replacement; resamples where the statistic is NaN (for
    Spearman: a constant resample) are ignored. ``(nan, nan)`` when fewer than 2 pairs or no
    resample gives a finite value.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    alpha = 1.0 - confidence
    _two_sided_z(confidence)  # validates confidence
    x, y = _paired_finite(x, y)
    n = x.size
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    if statistic is spearman:
        values = _spearman_rows(x[idx], y[idx]) if n >= 3 else np.full(n_resamples, np.nan)
    else:
        values = np.array([statistic(x[i], y[i]) for i in idx], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    low, high = np.percentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return (float(low), float(high))


def pinball_loss(residuals, q: float) -> float:
    """Sum of the check loss rho_q(r) = r (q - [r < 0]) over residuals r = y - prediction."""
    r = np.asarray(residuals, dtype=float)
    return float(np.sum(np.where(r >= 0, q * r, (q - 1.0) * r)))


def quantile_regression_line(x, y, q: float) -> tuple[float, float]:
    """Line ``a + b x`` with ``a >= 0``, ``b >= 0`` minimizing the pinball loss at quantile q.

    Solved as a linear program (scipy's HiGHS, through its dual) on the pairs where both values
    are finite. With q near 1 it is the smallest such line lying on or above about a fraction q
    of the points (the pinball loss charges q per unit above the line, 1 - q below). Returns
    ``(intercept, slope)`` in the units of y and y/x; ``(nan, nan)`` when no pair is finite.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    if n == 0:
        return (float("nan"), float("nan"))
    # Scale both axes to unit size so the solver tolerances are relative.
    sx = float(np.max(np.abs(x))) or 1.0
    sy = float(np.max(np.abs(y))) or 1.0
    xs, ys = x / sx, y / sy
    # Primal: variables a, b, u, v >= 0 with y_i - a - b x_i = u_i - v_i, minimizing
    # q sum u + (1 - q) sum v. HiGHS solves its dual, which has n box-bounded variables and two
    # constraints: maximize y.d subject to sum d <= 0, x.d <= 0, -(1 - q) <= d_i <= q. The
    # multipliers of those two constraints are (-a, -b).
    a_ub = np.vstack([np.ones(n), xs])
    res = optimize.linprog(-ys, A_ub=a_ub, b_ub=np.zeros(2), bounds=(-(1.0 - q), q), method="highs")
    if res.status != 0:
        raise RuntimeError(f"quantile regression LP failed: {res.message}")
    a, b = -res.ineqlin.marginals
    return (float(max(a, 0.0) * sy), float(max(b, 0.0) * sy / sx))


# --------------------------------------------------------------------------- over runs


class TInterval(NamedTuple):
    """Mean of ``n`` values, their sample standard deviation and the t interval of the mean."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


def t_interval(
    values, confidence: float = 0.95, bounds: tuple[float, float] | None = None
) -> TInterval:
    """Student-t interval of the mean of independent ``values`` (NaN dropped): mean ±
    t_{n-1, (1+confidence)/2} · s / √n, clipped to ``bounds`` when given. The interval is NaN
    below 2 values; with identical values it has zero width."""
    _two_sided_z(confidence)  # validates confidence
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return TInterval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if n < 2:
        return TInterval(1, mean, math.nan, math.nan, math.nan)
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return TInterval(n, mean, sd, float(low), float(high))


# --------------------------------------------------------------------------- permutation p

EXACT_MAX_N = 9
"""Up to this many pairs the permutation p-value enumerates all n! pairings (9! = 362880)."""

_REL_TOL = 1e-9  # a permuted statistic equal to the observed one up to round-off counts


@lru_cache(maxsize=4)
def all_permutations(n: int) -> np.ndarray:
    """Every permutation of range(n), one per row (n! rows; int8, so n ≤ 127; cached)."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def spearman_permutation_pvalue(
    x, y, exact_max_n: int = EXACT_MAX_N, n_resamples: int = 20000, seed: int | None = 0
) -> tuple[float, str]:
    """Two-sided p-value of Spearman's rho under the null that the pairing is random:
    P(|rho(x, y_perm)| >= |rho(x, y)|) over the permutations of y (ties keep their average
    ranks, so the test is conditional on them).

    Exact (every one of the n! pairings) for n <= ``exact_max_n``; otherwise a Monte Carlo
    estimate from ``n_resamples`` random pairings, (1 + hits) / (1 + n_resamples), which is
    never below the true p-value's resolution. Returns ``(p, method)`` with method ``"exact"``
    or ``"permutation (N resamples)"``; ``(nan, "")`` with fewer than 3 pairs or a constant
    input.
    """
    x, y = _paired_finite(x, y)
    n = int(x.size)
    if n < 3:
        return (math.nan, "")
    rx = average_ranks(x) - (n + 1) / 2.0
    ry = average_ranks(y) - (n + 1) / 2.0
    if not rx.any() or not ry.any():
        return (math.nan, "")
    observed = abs(float(rx @ ry))
    tol = _REL_TOL * float(np.sqrt((rx @ rx) * (ry @ ry)))
    if n <= exact_max_n:
        stats_ = np.abs(ry[all_permutations(n)] @ rx)
        return (float(np.mean(stats_ >= observed - tol)), "exact")
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(ry, (n_resamples, 1)), axis=1)
    hits = int(np.count_nonzero(np.abs(perms @ rx) >= observed - tol))
    return ((1.0 + hits) / (1.0 + n_resamples), f"permutation ({n_resamples} resamples)")


def min_exact_spearman_pvalue(n: int) -> float:
    """The smallest two-sided exact permutation p-value Spearman's rho can reach on n pairs
    without ties: 2 / n! (only the identity and the reversal reach |rho| = 1)."""
    return math.nan if n < 3 else 2.0 / math.factorial(n)


# --------------------------------------------------------------------------- corrections


def _adjust(pvalues, scale: Callable[[np.ndarray, int], np.ndarray], step_down: bool):
    """Adjusted p-values: ``scale(sorted p, m)`` made monotone (running max for a step-down
    procedure, running min from the top for a step-up one), capped at 1, in input order; NaN
    entries are left NaN and not counted in the family."""
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    scaled = scale(p[order], ok.size)
    if step_down:
        monotone = np.maximum.accumulate(scaled)
    else:
        monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    out[order] = np.minimum(monotone, 1.0)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.
    NaN entries are left NaN and not counted in the family."""
    return _adjust(pvalues, lambda p, m: (m - np.arange(m)) * p, step_down=True)


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order; NaN
    entries are left NaN and not counted."""
    return _adjust(pvalues, lambda p, m: p * m / np.arange(1, m + 1), step_down=False)
