"""Small statistics used by the verdicts: Wilson intervals, Spearman correlation with a paired
bootstrap interval, and a linear quantile-regression line fitted as a linear program.

Pure numpy/scipy. The paired functions drop pairs where either input is NaN (the quantile line
also drops infinite values) before computing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import optimize
from scipy import stats as sps

__all__ = [
    "SpearmanResult",
    "average_ranks",
    "bootstrap_ci",
    "pinball_loss",
    "quantile_regression_line",
    "spearman",
    "spearman_pvalue",
    "spearman_with_ci",
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


def spearman_pvalue(rho: float, n: int) -> float:
    """Two-sided p-value of a Spearman ``rho`` on ``n`` pairs by the t approximation
    (t = rho sqrt((n-2)/(1-rho^2)) with n-2 degrees of freedom), as scipy.stats.spearmanr."""
    if not np.isfinite(rho) or n < 3:
        return float("nan")
    if abs(rho) >= 1.0:
        return 0.0
    dof = n - 2
    t = rho * np.sqrt(dof / ((1.0 - rho) * (1.0 + rho)))
    return float(2.0 * sps.t.sf(abs(t), dof))


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


class SpearmanResult(NamedTuple):
    """Spearman correlation across runs with its bootstrap interval and t-approximation
    p-value; ``n`` is the number of pairs used (NaN pairs dropped)."""

    rho: float
    low: float
    high: float
    n: int
    pvalue: float


def spearman_with_ci(
    x,
    y,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> SpearmanResult:
    """Spearman rho, its paired-bootstrap percentile interval and its p-value."""
    x, y = _paired_finite(x, y)
    rho = spearman(x, y)
    low, high = bootstrap_ci(
        x, y, statistic=spearman, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return SpearmanResult(rho, low, high, int(x.size), spearman_pvalue(rho, int(x.size)))


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
