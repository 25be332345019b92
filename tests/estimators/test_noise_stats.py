"""Noise statistics and the two-batch estimator on synthetic gradient rows: hand algebra, and
expectations by Monte Carlo on Gaussians (ground truth G, Sigma known)."""

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
    assert stats_m.gns_minibatch == pytest.approx(float(s.sum() / (mu @ mu)), rel=0.05)
    assert stats_m.gns == pytest.approx(float(s.sum() / (mu @ mu)), rel=0.05)


def test_noise_stats_hand_example_and_examples_per_sample_scaling():
    rows = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # float32 in, float64 math
    # G = (2, 1); deviations (-1,-1), (1,-1), (0,2): squared norms 2 + 2 + 4 = 8; / (n-1) = 4
    one = noise_stats(rows)
    assert (one.trace_cov, one.grad_sq_norm, one.batch_size, one.num_samples) == (4.0, 5.0, 3, 3)
    assert one.gns_minibatch == pytest.approx(0.8, rel=1e-15)  # minibatch ratio
    assert one.snr_minibatch == pytest.approx(5.0 / (4.0 / 3.0), rel=1e-15)
    # unbiased |G|^2 = 5 - 4/3 = (3 * 5 - mean(1, 9, 13)) / (3 - 1) = 11/3
    assert one.grad_sq_norm_unbiased == pytest.approx(11.0 / 3.0, rel=1e-15)
    assert one.gns == pytest.approx(12.0 / 11.0, rel=1e-15)
    assert one.snr == pytest.approx(11.0 / 4.0, rel=1e-15)
    assert one.snr_minibatch == pytest.approx(one.snr + 1.0, rel=1e-15)
    for m in (2, 5):
        st = noise_stats(rows, examples_per_sample=m)
        assert st.trace_cov == pytest.approx(4.0 * m, rel=1e-15)
        assert st.grad_sq_norm == 5.0
        assert st.gns_minibatch == pytest.approx(0.8 * m, rel=1e-15)
        assert st.batch_size == 3 * m
        assert st.snr_minibatch == pytest.approx(
            one.snr_minibatch, rel=1e-15
        )  # B scales with m too
        # |G|^2 correction tr Sigma / (n m) = 4m / 3m: the same as for m = 1
        assert st.grad_sq_norm_unbiased == pytest.approx(11.0 / 3.0, rel=1e-15)
        assert st.gns == pytest.approx(12.0 * m / 11.0, rel=1e-15)
        assert st.snr == pytest.approx(11.0 / 4.0, rel=1e-15)
    # batch_size sets the B of the SNRs, not the |G|^2 correction (the mean is over n m = 6)
    big = noise_stats(rows, examples_per_sample=2, batch_size=12)
    assert big.snr_minibatch == pytest.approx(5.0 / (8.0 / 12.0), rel=1e-15)
    assert big.grad_sq_norm_unbiased == pytest.approx(11.0 / 3.0, rel=1e-15)
    assert big.snr == pytest.approx((11.0 / 3.0) / (8.0 / 12.0), rel=1e-15)
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
    assert grad_sq == pytest.approx(ref.grad_sq_norm_unbiased, rel=1e-12)
    # here noise dominates (|G|^2 estimate < 0): B_simple undefined in both
    assert grad_sq < 0 and math.isnan(gns) and math.isnan(ref.gns)
    signal = shards + 2.0
    grad_sq, trace, gns = two_batch_from_shards(signal, shard_batch=16)
    ref = noise_stats(signal, examples_per_sample=16)
    assert grad_sq > 0
    assert gns == pytest.approx(trace / grad_sq, rel=1e-12)
    assert gns == pytest.approx(ref.gns, rel=1e-12)  # noise/gns_two_batch ~ noise/gns

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
    assert math.isnan(st.gns_minibatch) and math.isnan(st.snr_minibatch)

    same = torch.ones(4, 3)  # no noise: gns 0, snr undefined
    st = noise_stats(same)
    assert st.gns_minibatch == 0.0 and math.isnan(st.snr_minibatch)

    assert st.gns == 0.0 and math.isnan(st.snr)

    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])  # mean exactly zero, noise nonzero
    st = noise_stats(opposite)
    assert st.trace_cov > 0 and math.isnan(st.gns_minibatch) and st.snr_minibatch == 0.0
    assert st.grad_sq_norm_unbiased < 0
    assert math.isnan(st.gns) and math.isnan(st.snr)

    assert math.isnan(two_batch_estimates(3.0, 4, 1.0, 12)[2])  # unbiased |G|^2 exactly 0
    assert math.isnan(two_batch_estimates(3.0, 4, 0.5, 12)[2])  # ... and negative
    assert all(math.isnan(v) or v == 0.0 for v in two_batch_from_shards(zeros, 2))


# ---------------------------------------------------------------------------------------------
# B_simple: the unbiased ratio against ground truth, and the biased minibatch ratio beside it


def simulated_gradients(draws: int, batch: int, dim: int = 20, seed: int = 23):
    """``draws`` batches of per-example gradients g_i = G + Sigma^(1/2) xi_i, xi_i ~ N(0, I),
    with |G|^2 = 1 and a dense Sigma = A A^T of trace 8: B_simple = tr Sigma / |G|^2 = 8."""
    gen = torch.Generator().manual_seed(seed)
    g_true = torch.randn(dim, generator=gen, dtype=torch.float64)
    g_true = g_true / g_true.norm()
    scale = torch.linspace(0.3, 1.5, dim, dtype=torch.float64)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64) * scale
    a = a * math.sqrt(8.0 / float((a**2).sum()))
    xi = torch.randn(draws, batch, dim, generator=gen, dtype=torch.float64)
    return g_true + xi @ a.T


@pytest.mark.parametrize("per_row", [1, 4])  # per-example rows; 4 micro-batches of 4
def test_gns_is_b_simple_on_simulated_gradients_and_minibatch_ratio_is_biased_low(per_row):
    draws, batch, b_simple, grad_sq_true = 4000, 16, 8.0, 1.0
    g = simulated_gradients(draws, batch)
    rows = g.reshape(draws, batch // per_row, per_row, g.shape[-1]).mean(2)
    stats = [noise_stats(r, examples_per_sample=per_row) for r in rows]
    grad_sq_u = np.array([st.grad_sq_norm_unbiased for st in stats])
    trace = np.array([st.trace_cov for st in stats])
    gns = np.array([st.gns for st in stats])
    snr = np.array([st.snr for st in stats])
    assert {st.batch_size for st in stats} == {batch}

    # the estimates are unbiased: E|G|^2_u = |G|^2, E tr = tr Sigma (raw |G_B|^2: 1 + 8/16)
    assert grad_sq_u.mean() == pytest.approx(grad_sq_true, rel=0.03)
    assert trace.mean() == pytest.approx(b_simple * grad_sq_true, rel=0.03)
    assert np.mean([st.grad_sq_norm for st in stats]) == pytest.approx(1.5, rel=0.03)

    # undefined exactly where noise dominates; counted as an infinite noise scale
    assert np.array_equal(np.isnan(gns), grad_sq_u <= 0)
    assert np.array_equal(np.isnan(snr), grad_sq_u <= 0)
    assert np.isnan(gns).mean() < 0.01
    assert np.median(np.where(np.isnan(gns), np.inf, gns)) == pytest.approx(b_simple, rel=0.15)
    snr_true = grad_sq_true / (b_simple * grad_sq_true / batch)  # 2
    assert np.median(np.where(np.isnan(snr), -np.inf, snr)) == pytest.approx(snr_true, rel=0.15)

    # the minibatch ratio: expectation tr Sigma / (|G|^2 + tr Sigma / B) = 8 / 1.5 = 5.3
    old_gns = np.array([st.gns_minibatch for st in stats])
    old_snr = np.array([st.snr_minibatch for st in stats])
    biased = b_simple / (1.0 + b_simple / batch)
    assert np.median(old_gns) == pytest.approx(biased, rel=0.1)
    assert np.median(old_gns) < 0.75 * b_simple
    assert np.median(old_snr) == pytest.approx(snr_true + 1.0, rel=0.1)


def test_unbiased_ratios_closed_form_and_undefined_when_noise_dominates():
    # G_B = (2, 1), |G_B|^2 = 5; deviations (+-1, 0): tr = 2 / (2 - 1) = 2; |G|^2_u = 5 - 2/2
    st = noise_stats(torch.tensor([[1.0, 1.0], [3.0, 1.0]], dtype=torch.float64))
    assert (st.trace_cov, st.grad_sq_norm, st.grad_sq_norm_unbiased) == (2.0, 5.0, 4.0)
    assert (st.gns, st.snr) == (0.5, 4.0)
    assert (st.gns_minibatch, st.snr_minibatch) == (0.4, 5.0)
    # (n |G_B|^2 - mean_i |g_i|^2) / (n - 1) = (2 * 5 - (2 + 10) / 2) / 1 = 4, and the
    # two-batch estimate with B_small = 1, B_big = 2
    assert two_batch_estimates(6.0, 1, 5.0, 2) == (4.0, 2.0, 0.5)

    # G_B = (0.5, 0), |G_B|^2 = 1/4; deviations +-1.5: tr = 4.5; |G|^2_u = 1/4 - 4.5/2 = -2
    st = noise_stats(torch.tensor([[2.0, 0.0], [-1.0, 0.0]], dtype=torch.float64))
    assert (st.trace_cov, st.grad_sq_norm, st.grad_sq_norm_unbiased) == (4.5, 0.25, -2.0)
    assert math.isnan(st.gns) and math.isnan(st.snr)
    assert st.gns_minibatch == 18.0 and st.snr_minibatch == pytest.approx(
        1.0 / 9.0, rel=1e-15
    )  # gns > B
    # orthogonal rows: |G|^2_u exactly 0, the boundary is undefined too
    st = noise_stats(torch.eye(2, dtype=torch.float64))
    assert st.grad_sq_norm_unbiased == 0.0
    assert math.isnan(st.gns) and math.isnan(st.snr)
    assert st.gns_minibatch == 2.0 and st.snr_minibatch == 1.0
