"""Noise statistics and the two-batch estimator on synthetic gradient rows: hand algebra, and
expectations by Monte Carlo on Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optprobe.estimators.noise_stats import noise_stats, two_batch_estimates, two_batch_from_shards


def test_noise_stats_recovers_known_covariance_trace():
    gen = torch.Generator().manual_seed(7)
    s = torch.linspace(0.5, 3.0, 10, dtype=torch.float64)
    mu = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
    n = 20000
    # per-example gradients ~ N(mu, diag(s))
    rows = mu + s.sqrt() * torch.randn(n, 10, generator=gen, dtype=torch.float64)
    stats = noise_stats(rows)
    assert stats.trace_cov == pytest.approx(float(s.sum()), rel=0.03)
    assert stats.grad_sq_norm == pytest.approx(float(mu @ mu), rel=0.03)
    # rows that each average m examples have covariance diag(s)/m; rescaled back to one example
    m = 8
    mean_rows = mu + (s / m).sqrt() * torch.randn(n, 10, generator=gen, dtype=torch.float64)
    stats_m = noise_stats(mean_rows, examples_per_sample=m)
    assert stats_m.trace_cov == pytest.approx(float(s.sum()), rel=0.03)
    assert stats_m.batch_size == n * m
    assert stats_m.gns == pytest.approx(float(s.sum() / (mu @ mu)), rel=0.05)


def test_noise_stats_hand_example_and_examples_per_sample_scaling():
    rows = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # float32 in, float64 math
    # G = (2, 1); deviations (-1,-1), (1,-1), (0,2): squared norms 2 + 2 + 4 = 8; / (n-1) = 4
    one = noise_stats(rows)
    assert (one.trace_cov, one.grad_sq_norm, one.batch_size, one.num_samples) == (4.0, 5.0, 3, 3)
    assert one.gns == pytest.approx(0.8, rel=1e-15)
    assert one.snr == pytest.approx(5.0 / (4.0 / 3.0), rel=1e-15)
    for m in (2, 5):
        st = noise_stats(rows, examples_per_sample=m)
        assert st.trace_cov == pytest.approx(4.0 * m, rel=1e-15)
        assert st.grad_sq_norm == 5.0
        assert st.gns == pytest.approx(0.8 * m, rel=1e-15)
        assert st.batch_size == 3 * m
        assert st.snr == pytest.approx(one.snr, rel=1e-15)  # B scales with m too
    assert noise_stats(rows, examples_per_sample=2, batch_size=12).snr == pytest.approx(
        5.0 / (8.0 / 12.0), rel=1e-15
    )
    with pytest.raises(ValueError):
        noise_stats(rows[:1])


# ---------------------------------------------------------------------------------------------
# two-batch (small/large) unbiased estimator


def test_two_batch_estimates_hand_algebra():
    # |G|^2 = (8*2 - 2*5)/(8-2) = 1; tr = (5-2)/(1/2-1/8) = 8; gns = 8
    grad_sq, trace, gns = two_batch_estimates(5.0, 2, 2.0, 8)
    assert grad_sq == pytest.approx(1.0, rel=1e-15)
    assert trace == pytest.approx(8.0, rel=1e-15)
    assert gns == pytest.approx(8.0, rel=1e-15)
    grad_sq, trace, _ = two_batch_estimates(torch.tensor(3.0), 4, torch.tensor(1.0), 12)
    assert grad_sq == pytest.approx((12 - 12) / 8, abs=1e-15)
    assert trace == pytest.approx(2.0 / (1 / 4 - 1 / 12), rel=1e-15)
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 8, 1.0, 8)


def test_two_batch_estimates_unbiased_on_gaussian_gradients():
    gen = torch.Generator().manual_seed(8)
    dim, trials, b_small, b_big = 20, 20000, 8, 64
    g_true = torch.full((dim,), 1.0 / math.sqrt(dim), dtype=torch.float64)  # |G|^2 = 1
    s = torch.linspace(0.2, 1.8, dim, dtype=torch.float64)  # tr Sigma = 20

    def batch_means(b):
        z = torch.randn(trials, dim, generator=gen, dtype=torch.float64)
        return g_true + (s / b).sqrt() * z

    small, big = batch_means(b_small), batch_means(b_big)
    est = [
        two_batch_estimates(float(a @ a), b_small, float(c @ c), b_big)
        for a, c in zip(small, big, strict=True)
    ]
    grad_sq = np.mean([e[0] for e in est])
    trace = np.mean([e[1] for e in est])
    assert grad_sq == pytest.approx(1.0, rel=0.03)
    assert trace == pytest.approx(20.0, rel=0.03)
    # the naive big-batch norm is biased up by tr Sigma / B_big (here 0.31): the test can see it
    assert float((big**2).sum(1).mean()) > 1.2


def test_two_batch_from_shards_matches_noise_stats_and_is_unbiased():
    gen = torch.Generator().manual_seed(9)
    shards = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    grad_sq, trace, gns = two_batch_from_shards(shards, shard_batch=16)
    # with |G_small|^2 averaged over shards, the trace estimate is the unbiased sample covariance
    ref = noise_stats(shards, examples_per_sample=16)
    assert trace == pytest.approx(ref.trace_cov, rel=1e-12)
    assert grad_sq == pytest.approx(ref.grad_sq_norm - ref.trace_cov / 64, rel=1e-12)
    assert gns == pytest.approx(trace / grad_sq, rel=1e-12)

    dim, trials, k, b = 10, 5000, 4, 16
    g_true = torch.full((dim,), 0.5, dtype=torch.float64)  # |G|^2 = 2.5
    s = torch.linspace(1.0, 5.0, dim, dtype=torch.float64)  # tr Sigma = 30
    draws = g_true + (s / b).sqrt() * torch.randn(
        trials, k, dim, generator=gen, dtype=torch.float64
    )
    est = np.array([two_batch_from_shards(d, b)[:2] for d in draws])
    assert est[:, 0].mean() == pytest.approx(2.5, rel=0.03)
    assert est[:, 1].mean() == pytest.approx(30.0, rel=0.03)
    with pytest.raises(ValueError):
        two_batch_from_shards(shards[:1], 16)


# ---------------------------------------------------------------------------------------------
# zero guards


def test_nan_instead_of_division_by_zero():
    zeros = torch.zeros(5, 3)
    st = noise_stats(zeros)
    assert st.trace_cov == 0.0 and st.grad_sq_norm == 0.0
    assert math.isnan(st.gns) and math.isnan(st.snr)

    same = torch.ones(4, 3)  # no noise: gns 0, snr undefined
    st = noise_stats(same)
    assert st.gns == 0.0 and math.isnan(st.snr)

    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])  # mean exactly zero, noise nonzero
    st = noise_stats(opposite)
    assert st.trace_cov > 0 and math.isnan(st.gns) and st.snr == 0.0

    assert math.isnan(two_batch_estimates(3.0, 4, 1.0, 12)[2])  # unbiased |G|^2 exactly 0
    assert all(math.isnan(v) or v == 0.0 for v in two_batch_from_shards(zeros, 2))
