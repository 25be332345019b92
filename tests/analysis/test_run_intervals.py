"""Per-run intervals of a held fraction: near nominal coverage on autocorrelated 0/1 sequences,
where the plain Wilson interval (steps counted as independent) is far too narrow."""

from __future__ import annotations

import numpy as np
import pytest

from optprobe.analysis.run_intervals import (
    METHOD,
    effective_sample_size,
    lag1_autocorrelation,
    run_interval,
)
from optprobe.analysis.stats import wilson_interval


def markov_chains(reps: int, n: int, p: float, rho: float, seed: int) -> np.ndarray:
    """``reps`` stationary two-state Markov chains (0/1) of length n, P(1) = p and lag-1
    autocorrelation rho (an AR(1) on {0, 1}: autocorrelation rho^k at lag k)."""
    rng = np.random.default_rng(seed)
    leave_one, leave_zero = (1 - p) * (1 - rho), p * (1 - rho)  # P(1->0), P(0->1)
    x = np.empty((reps, n), dtype=bool)
    x[:, 0] = rng.random(reps) < p
    u = rng.random((reps, n))
    for t in range(1, n):
        x[:, t] = np.where(x[:, t - 1], u[:, t] >= leave_one, u[:, t] < leave_zero)
    return x


@pytest.mark.parametrize("n,p,rho", [(120, 0.6, 0.7), (300, 0.3, 0.78), (60, 0.8, 0.5)])
def test_coverage_is_near_nominal_where_wilson_is_far_too_narrow(n, p, rho):
    chains = markov_chains(1500, n, p, rho, seed=n)
    ours = plain = 0
    for x in chains:
        low, high, _, method = run_interval(x)
        ours += low <= p <= high
        w_low, w_high = wilson_interval(int(x.sum()), n)
        plain += w_low <= p <= w_high
    assert method == METHOD
    assert 0.89 <= ours / len(chains) <= 0.985
    assert plain / len(chains) < 0.8


def test_independent_steps_keep_about_the_wilson_interval():
    chains = markov_chains(1500, 120, 0.5, 0.0, seed=1)
    covered = sum(run_interval(x).low <= 0.5 <= run_interval(x).high for x in chains)
    assert 0.93 <= covered / len(chains) <= 0.98


def test_effective_sample_size_and_edges():
    alternating = np.arange(100) % 2 == 0  # negative autocorrelation: never narrower than n
    assert lag1_autocorrelation(alternating) < 0
    assert effective_sample_size(alternating) == 100
    runs = np.repeat([True, False], 50)  # one switch: almost no independent information
    rho = lag1_autocorrelation(runs)
    assert effective_sample_size(runs) == pytest.approx(max(1.0, 100 * (1 - rho) / (1 + rho)))
    assert effective_sample_size(np.ones(30, dtype=bool)) == 30  # constant: nothing to correct
    assert run_interval(np.ones(30, dtype=bool))[:2] == pytest.approx(wilson_interval(30, 30))
    empty = run_interval([])
    assert np.isnan(empty.low) and np.isnan(empty.high) and empty.n_eff == 0
    wide = run_interval(runs)
    assert wide.high - wide.low > 0.5  # 50% held, but from about one observation
