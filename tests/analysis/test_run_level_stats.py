"""The statistics of the cross-run analysis against ground truths that could disagree: hand
computed t intervals, scipy's permutation test, simulated runs with a known mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from optprobe.analysis.stats import (
    benjamini_hochberg,
    holm,
    min_exact_spearman_pvalue,
    spearman_permutation_pvalue,
    t_interval,
    wilson_interval,
)

T_975_4 = 2.7764451051977987  # Student t quantile 0.975 with 4 degrees of freedom (tables)


# --------------------------------------------------------------------------- t interval


def test_t_interval_by_hand():
    values = [0.2, 0.4, 0.9, 0.5, 0.6]
    # mean 0.52; squared deviations .1024 .0144 .1444 .0004 .0064 sum to .268; s² = .067
    half = T_975_4 * math.sqrt(0.067) / math.sqrt(5)
    ti = t_interval(values)
    assert (ti.n, ti.mean, ti.sd) == (5, pytest.approx(0.52), pytest.approx(math.sqrt(0.067)))
    assert (ti.low, ti.high) == pytest.approx((0.52 - half, 0.52 + half), abs=1e-12)
    assert (ti.low, ti.high) == pytest.approx((0.198603, 0.841397), abs=1e-6)
    scipy_ci = stats.t.interval(0.95, 4, loc=0.52, scale=stats.sem(values))
    assert (ti.low, ti.high) == pytest.approx(scipy_ci, abs=1e-12)


def test_t_interval_edges():
    wide = t_interval([0.2, 0.4, 0.9], bounds=(0.0, 1.0))  # [-0.396, 1.396] before clipping
    assert (wide.low, wide.high) == (0.0, 1.0)
    one = t_interval([0.7, np.nan])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    same = t_interval([0.3, 0.3, 0.3])
    assert (same.low, same.high) == pytest.approx((0.3, 0.3))
    assert t_interval([]).n == 0
    with pytest.raises(ValueError):
        t_interval([0.1, 0.2], confidence=1.0)


def markov_runs(rng, n_sims: int, runs: int, steps: int, rho: float, a: float, b: float):
    """Held indicators of ``runs`` runs per simulation: run r holds with a stationary
    probability p_r ~ Beta(a, b), as a two-state Markov chain with lag-1 autocorrelation rho."""
    p = rng.beta(a, b, (n_sims, runs))
    x = rng.random((n_sims, runs)) < p
    held = np.empty((n_sims, runs, steps), dtype=bool)
    held[..., 0] = x
    stay, enter = p + rho * (1 - p), p * (1 - rho)
    for t in range(1, steps):
        u = rng.random((n_sims, runs))
        x = np.where(x, u < stay, u < enter)
        held[..., t] = x
    return held


def test_run_level_interval_covers_and_pooled_wilson_does_not():
    """5 runs of 120 autocorrelated steps (lag-1 autocorrelation 0.7, as measured on real
    runs), each run with its own fraction: the t interval over runs covers the mean fraction
    about 95% of the time; a Wilson interval over the pooled steps covers it far less."""
    rng = np.random.default_rng(0)
    held = markov_runs(rng, n_sims=1000, runs=5, steps=120, rho=0.7, a=8.0, b=4.0)
    lag1 = np.mean([np.corrcoef(h[:-1], h[1:])[0, 1] for h in held[:50, 0]])
    assert 0.55 < lag1 < 0.8
    target = 8.0 / 12.0
    fractions = held.mean(axis=-1)
    covered = [t_interval(f).low <= target <= t_interval(f).high for f in fractions]
    n_steps = held.shape[1] * held.shape[2]
    pooled = [wilson_interval(int(k), n_steps) for k in held.sum(axis=(1, 2))]
    pooled_covered = [lo <= target <= hi for lo, hi in pooled]
    assert 0.92 <= np.mean(covered) <= 0.97
    assert np.mean(pooled_covered) < 0.6


# --------------------------------------------------------------------------- Spearman p


def scipy_permutation_p(x, y, n_resamples=np.inf) -> float:
    """P(|rho(x, y_perm)| >= |rho(x, y)|) by scipy's permutation test (exact when
    n_resamples is inf)."""
    rx = stats.rankdata(x) - (len(x) + 1) / 2

    def abs_rho(yy, axis=-1):
        ry = stats.rankdata(yy, axis=-1)
        ry = ry - ry.mean(axis=-1, keepdims=True)
        return np.abs((ry * rx).sum(-1) / np.sqrt((rx * rx).sum() * (ry * ry).sum(-1)))

    res = stats.permutation_test(
        (np.asarray(y, float),),
        abs_rho,
        vectorized=True,
        permutation_type="pairings",
        alternative="greater",
        n_resamples=n_resamples,
        random_state=1,
    )
    return float(res.pvalue)


def test_issue_example_exact_not_t_approximation():
    """rho = 0.943 on 6 runs: exact p = 12/720 = 0.0167, the t approximation says 0.0048."""
    x, y = np.arange(6.0), np.array([0.0, 2.0, 1.0, 3.0, 4.0, 5.0])
    p, method = spearman_permutation_pvalue(x, y)
    assert method == "exact"
    assert p == pytest.approx(12 / 720)
    assert stats.spearmanr(x, y).pvalue == pytest.approx(0.0048, abs=1e-4)


@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_exact_pvalue_matches_scipy(n):
    rng = np.random.default_rng(n)
    for _ in range(3):
        x = rng.normal(size=n)
        y = x + rng.normal(scale=1.0, size=n)
        tied_x = np.round(x)  # ties: the test is conditional on them
        for xx in (x, tied_x):
            p, method = spearman_permutation_pvalue(xx, y)
            assert method == "exact"
            assert p == pytest.approx(scipy_permutation_p(xx, y), abs=1e-12)


def test_monte_carlo_pvalue_for_many_runs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=14)
    y = 0.4 * x + rng.normal(size=14)
    p, method = spearman_permutation_pvalue(x, y, n_resamples=20000)
    assert method == "permutation (20000 resamples)"
    assert p == pytest.approx(scipy_permutation_p(x, y, n_resamples=20000), abs=0.015)
    assert p >= 1 / 20001
    assert math.isnan(spearman_permutation_pvalue([1, 2], [2, 1])[0])  # fewer than 3 pairs
    assert math.isnan(spearman_permutation_pvalue([1, 2, 3], [5, 5, 5])[0])


def test_smallest_exact_pvalue():
    for n in (4, 5, 6):
        assert min_exact_spearman_pvalue(n) == 2 / math.factorial(n)
        p, _ = spearman_permutation_pvalue(np.arange(n), np.arange(n)[::-1])
        assert p == pytest.approx(min_exact_spearman_pvalue(n))


# --------------------------------------------------------------------------- corrections


def test_holm_by_hand():
    # sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> running max .02 .03 .06 .06
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    assert holm([0.6, 0.9])[1] == 1.0  # capped at 1
    assert holm([]).size == 0


def test_holm_rejections_match_the_step_down_procedure():
    rng = np.random.default_rng(5)
    for _ in range(50):
        p = rng.uniform(0, 0.05, 8) ** rng.uniform(0.5, 2)
        order = np.argsort(p)
        rejected = np.zeros(8, dtype=bool)
        for k, i in enumerate(order):  # reject while p_(k) <= alpha / (m - k)
            if p[i] > 0.05 / (8 - k):
                break
            rejected[i] = True
        np.testing.assert_array_equal(holm(p) <= 0.05, rejected)


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 0.2, 12)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p))
    with_nan = benjamini_hochberg([0.01, np.nan, 0.04])
    assert math.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2]], stats.false_discovery_control([0.01, 0.04]))
