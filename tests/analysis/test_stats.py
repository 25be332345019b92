"""Tests for optprobe.analysis.stats against closed forms, scipy and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from optprobe.analysis.stats import (
    average_ranks,
    bootstrap_ci,
    pinball_loss,
    quantile_regression_line,
    spearman,
    wilson_interval,
)

Z95 = 1.959963984540054


def wilson_roots(held: int, n: int, z: float) -> tuple[float, float]:
    """Wilson endpoints as the roots p of (p_hat - p)^2 = z^2 p (1 - p) / n."""
    p_hat = held / n
    k = z * z / n
    roots = np.sort(np.roots([1.0 + k, -(2.0 * p_hat + k), p_hat * p_hat]).real)
    return float(roots[0]), float(roots[1])


# --------------------------------------------------------------------------- Wilson


def test_wilson_73_of_100_matches_hand_values():
    low, high = wilson_interval(73, 100)
    # center (0.73 + z^2/200) / (1 + z^2/100), half-width z sqrt(.73*.27/100 + z^2/4e4) / (1 + z^2/100)
    assert low == pytest.approx(0.6356788, abs=1e-6)
    assert high == pytest.approx(0.8073042, abs=1e-6)
    assert (low, high) == pytest.approx(wilson_roots(73, 100, Z95), abs=1e-12)


@pytest.mark.parametrize("held,n", [(1, 7), (5, 10), (17, 40), (999, 1000), (3, 3000)])
def test_wilson_endpoints_solve_the_score_equation(held, n):
    assert wilson_interval(held, n) == pytest.approx(wilson_roots(held, n, Z95), abs=1e-12)


def test_wilson_confidence_level():
    z99 = float(sps.norm.ppf(0.995))
    assert wilson_interval(30, 50, 0.99) == pytest.approx(wilson_roots(30, 50, z99), abs=1e-12)
    lo95, hi95 = wilson_interval(30, 50)
    lo99, hi99 = wilson_interval(30, 50, 0.99)
    assert lo99 < lo95 < 0.6 < hi95 < hi99


def test_wilson_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775328, abs=1e-6)  # z^2 / (n + z^2)
    low, high = wilson_interval(10, 10)
    assert high == 1.0
    assert low == pytest.approx(1.0 - 0.2775328, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(1, 10, confidence=1.5)


# --------------------------------------------------------------------------- Spearman


def test_average_ranks_match_scipy_rankdata():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, size=(40, 17)).astype(float)
    np.testing.assert_array_equal(average_ranks(a), sps.rankdata(a, axis=-1))
    b = rng.normal(size=25)
    np.testing.assert_array_equal(average_ranks(b), sps.rankdata(b))


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = 5 + 7 * seed
    x = rng.normal(size=n)
    y = np.sign(seed - 2) * x + rng.normal(size=n)
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    xt, yt = np.round(x), np.round(y)  # ties
    assert spearman(xt, yt) == pytest.approx(sps.spearmanr(xt, yt).statistic, abs=1e-12)


def test_spearman_degenerate_and_nan():
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, np.nan, 6.0, 5.0])
    keep = ~(np.isnan(x) | np.isnan(y))
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x[keep], y[keep]).statistic)
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- bootstrap


def _spearman_along_axis(x, y, axis=-1):
    """Vectorized Spearman via scipy's rankdata (independent of the code under test)."""
    rx = sps.rankdata(x, axis=axis)
    ry = sps.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    return (rx * ry).sum(axis=axis) / np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))


def test_bootstrap_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(42)
    x = rng.normal(size=30)
    y = 0.6 * x + rng.normal(size=30)
    ours = bootstrap_ci(x, y, n_resamples=20000, seed=1)
    ref = sps.bootstrap(
        (x, y),
        _spearman_along_axis,
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=20000,
        confidence_level=0.95,
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.05)
    assert ours[1] == pytest.approx(ref.high, abs=0.05)
    rho = spearman(x, y)
    assert ours[0] < rho < ours[1]


def test_bootstrap_generic_statistic_path_equals_vectorized_path():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=12), rng.normal(size=12)
    fast = bootstrap_ci(x, y, n_resamples=300, seed=7)
    slow = bootstrap_ci(x, y, statistic=lambda a, b: spearman(a, b), n_resamples=300, seed=7)
    assert fast == pytest.approx(slow, abs=1e-12)
    assert bootstrap_ci(x, y, n_resamples=300, seed=7) == fast  # reproducible


def test_bootstrap_ignores_nan_resamples():
    # With 3 runs, resamples drawing one run only are constant (NaN Spearman); the others
    # all give rho = 1. Ignoring the NaNs leaves the interval [1, 1].
    assert bootstrap_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_resamples=500) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0], [2.0]))
    assert all(math.isnan(v) for v in bootstrap_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_bootstrap_coverage_is_sane():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + 0.5 * rng.normal(size=40)
    low, high = bootstrap_ci(x, y)
    assert 0.0 < low < high
    includes_zero = 0
    trials = 40
    for seed in range(trials):
        r = np.random.default_rng(100 + seed)
        lo, hi = bootstrap_ci(r.normal(size=30), r.normal(size=30), n_resamples=1000, seed=seed)
        includes_zero += lo < 0.0 < hi
    assert includes_zero >= 0.85 * trials


# --------------------------------------------------------------------------- quantile line


def test_quantile_line_recovers_upper_envelope():
    rng = np.random.default_rng(0)
    n, q = 5000, 0.999
    x = rng.uniform(0.0, 1.0, n)
    y = 2.0 + 3.0 * x + rng.uniform(0.0, 1.0, n)
    a, b = quantile_regression_line(x, y, q)
    assert a == pytest.approx(3.0, abs=0.03)
    assert b == pytest.approx(3.0, abs=0.03)
    covered = np.mean(y <= a + b * x + 1e-9)
    assert covered == pytest.approx(q, abs=0.002)
    a50, b50 = quantile_regression_line(x, y, 0.5)
    assert a50 == pytest.approx(2.5, abs=0.05)
    assert b50 == pytest.approx(3.0, abs=0.1)
    assert np.mean(y <= a50 + b50 * x + 1e-9) == pytest.approx(0.5, abs=0.01)


def test_quantile_line_matches_brute_force():
    rng = np.random.default_rng(11)
    x = rng.uniform(0.0, 2.0, 9)
    y = 1.0 + 0.8 * x + rng.exponential(1.0, 9)
    for q in (0.5, 0.8, 0.95):
        a, b = quantile_regression_line(x, y, q)
        assert a >= 0.0 and b >= 0.0
        loss = pinball_loss(y - a - b * x, q)
        # Grid search over (a, b) >= 0: the LP is never beaten and the grid comes close.
        grid_a, grid_b = np.meshgrid(np.linspace(0, 6, 601), np.linspace(0, 4, 401))
        resid = y[None, None, :] - grid_a[..., None] - grid_b[..., None] * x[None, None, :]
        grid = np.sum(np.where(resid >= 0, q * resid, (q - 1) * resid), axis=-1)
        assert loss <= grid.min() + 1e-9
        assert grid.min() <= loss + 0.05
        # Exact: an optimum lies on a vertex (line through two points, or a point with a=0 or
        # b=0, or the origin); enumerate them all.
        cands = [(0.0, 0.0)]
        for i, j in itertools.combinations(range(x.size), 2):
            slope = (y[j] - y[i]) / (x[j] - x[i])
            cands.append((y[i] - slope * x[i], slope))
        cands += [(0.0, yi / xi) for xi, yi in zip(x, y)] + [(yi, 0.0) for yi in y]
        best = min(pinball_loss(y - ca - cb * x, q) for ca, cb in cands if ca >= 0 and cb >= 0)
        assert loss == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_quantile_line_constraints_and_missing_values():
    x = np.linspace(0.0, 1.0, 50)
    a, b = quantile_regression_line(x, 5.0 - 4.0 * x, 0.9)  # decreasing: slope clipped at 0
    assert b == pytest.approx(0.0, abs=1e-9)
    assert a == pytest.approx(np.quantile(5.0 - 4.0 * x, 0.9), abs=0.05)
    y = 1.0 + 2.0 * x
    xn, yn = x.copy(), y.copy()
    xn[3], yn[7], yn[9] = np.nan, np.inf, np.nan
    yn[11] = 1e6  # a far outlier above the 0.9 line does not move it
    a, b = quantile_regression_line(xn, yn, 0.9)
    assert (a, b) == pytest.approx((1.0, 2.0), abs=1e-6)
    assert all(math.isnan(v) for v in quantile_regression_line([np.nan], [1.0], 0.9))
    with pytest.raises(ValueError):
        quantile_regression_line(x, y, 1.0)


def test_quantile_line_scale_equivariant():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 200)
    y = 0.5 + x + rng.uniform(0, 1, 200)
    a, b = quantile_regression_line(x, y, 0.9)
    a2, b2 = quantile_regression_line(1e-3 * x, 1e4 * y, 0.9)
    assert (a2, b2) == pytest.approx((1e4 * a, 1e7 * b), rel=1e-6)
