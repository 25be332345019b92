"""Brute-force checks of the gradient-noise estimators in optprobe.probes.noise.

References are computed independently: per-example gradients by a plain autograd loop (or a
closed form), covariance traces with numpy, expectations by Monte Carlo on Gaussians.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optprobe.estimators.functional import functional_loss, trainable_params
from optprobe.probes.noise import (
    NoiseStats,
    microbatch_grads,
    noise_stats,
    per_example_grads,
    per_example_grads_supported,
    two_batch_estimates,
    two_batch_from_shards,
)


def loop_grads(net, inputs, targets, loss_fn):
    """Per-example gradients with plain autograd, one backward per example (the reference)."""
    params = [p for p in net.parameters() if p.requires_grad]
    rows = []
    for i in range(inputs.shape[0]):
        loss = loss_fn(net(inputs[i : i + 1]), targets[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).to(torch.float64))
    return torch.stack(rows)


def batch_grad(net, inputs, targets, loss_fn):
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(net(inputs), targets), params)
    return torch.cat([g.reshape(-1) for g in grads]).to(torch.float64)


def numpy_stats(rows: np.ndarray, batch: int) -> tuple[float, float, float, float]:
    """trace_cov, |G|^2, gns, snr by hand: unbiased covariance matrix, its trace."""
    mean = rows.mean(axis=0)
    cov = np.cov(rows, rowvar=False, ddof=1)
    trace = float(np.trace(np.atleast_2d(cov)))
    sq = float(mean @ mean)
    return trace, sq, trace / sq, sq / (trace / batch)


def assert_stats_match(stats: NoiseStats, rows: np.ndarray, batch: int) -> None:
    trace, sq, gns, snr = numpy_stats(rows, batch)
    assert stats.trace_cov == pytest.approx(trace, rel=1e-6)
    assert stats.grad_sq_norm == pytest.approx(sq, rel=1e-6)
    assert stats.gns == pytest.approx(gns, rel=1e-6)
    assert stats.snr == pytest.approx(snr, rel=1e-6)
    assert stats.batch_size == batch
    assert stats.num_samples == rows.shape[0]


# ---------------------------------------------------------------------------------------------
# per_example_grads against brute force


def test_mlp_per_example_grads_and_stats_match_autograd_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    got = per_example_grads(net, trainable_params(net), x, y, F.cross_entropy)
    ref = loop_grads(net, x, y, F.cross_entropy)
    assert got.shape == (12, 5 * 7 + 7 + 7 * 3 + 3) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # rows are genuinely different and average to the batch gradient (mean-reduced loss)
    assert (ref - ref.mean(0)).abs().max() > 1e-3
    torch.testing.assert_close(got.mean(0), batch_grad(net, x, y, F.cross_entropy))
    # chunked vmap gives the same rows
    chunked = per_example_grads(net, trainable_params(net), x, y, F.cross_entropy, chunk_size=5)
    torch.testing.assert_close(chunked, got, rtol=0, atol=1e-14)

    assert_stats_match(noise_stats(got), ref.numpy(), batch=12)
    assert_stats_match(noise_stats(got, batch_size=64), ref.numpy(), batch=64)


def test_logistic_regression_per_example_grads_match_closed_form():
    torch.manual_seed(1)
    d, n = 4, 16
    net = nn.Linear(d, 1).double()

    def bce(out, t):
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), t)

    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, 2, (n,)).double()
    got = per_example_grads(net, trainable_params(net), x, y, bce)
    # closed form: grad of BCE(sigmoid(w.x + b), y) is (sigmoid(w.x + b) - y) * [x, 1]
    w, b = net.weight.detach().numpy()[0], net.bias.detach().numpy()[0]
    xn, yn = x.numpy(), y.numpy()
    resid = 1.0 / (1.0 + np.exp(-(xn @ w + b))) - yn
    closed = np.concatenate([resid[:, None] * xn, resid[:, None]], axis=1)
    np.testing.assert_allclose(got.numpy(), closed, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, loop_grads(net, x, y, bce), rtol=1e-10, atol=1e-12)
    assert_stats_match(noise_stats(got), closed, batch=n)


class TinyCausalLM(nn.Module):
    """Embedding -> one causal self-attention layer (plain matmul/softmax) -> linear head."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        t = idx.shape[1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()
        attn = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self.head(x + attn @ v)


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def test_causal_lm_per_sequence_grads_match_loop():
    torch.manual_seed(2)
    vocab, batch, seq = 13, 6, 9
    net = TinyCausalLM(vocab, 8).double()
    tokens = torch.randint(0, vocab, (batch, seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    got = per_example_grads(net, trainable_params(net), inputs, targets, lm_loss)
    ref = loop_grads(net, inputs, targets, lm_loss)
    assert got.shape[0] == batch
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # same sequence length everywhere: mean over sequences == mean over all tokens
    torch.testing.assert_close(got.mean(0), batch_grad(net, inputs, targets, lm_loss))


def test_project_gpt_with_tied_head_matches_loop():
    from optprobe.models.gpt import GPT

    torch.manual_seed(3)
    net = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8).double()
    tokens = torch.randint(0, 11, (4, 8))
    params = trainable_params(net)  # the tied head weight appears once, as tok_emb.weight
    got = per_example_grads(net, params, tokens, tokens.roll(-1, dims=1), lm_loss)
    ref = loop_grads(net, tokens, tokens.roll(-1, dims=1), lm_loss)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_dropout_in_train_mode_runs_with_independent_masks():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 2)).double().train()
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    got = per_example_grads(net, trainable_params(net), x, y, F.cross_entropy)
    assert torch.isfinite(got).all()
    net.eval()
    no_drop = per_example_grads(net, trainable_params(net), x, y, F.cross_entropy)
    torch.testing.assert_close(no_drop, loop_grads(net, x, y, F.cross_entropy))
    assert not torch.allclose(got, no_drop)


# ---------------------------------------------------------------------------------------------
# BatchNorm: detection, micro-batch fallback, live buffers untouched


def make_bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def bn_state(net):
    return {k: v.clone() for k, v in net.named_buffers()}


def assert_same_buffers(net, saved):
    for k, v in net.named_buffers():
        assert torch.equal(v, saved[k]), k


def test_batchnorm_train_mode_uses_microbatches_and_leaves_buffers_untouched():
    torch.manual_seed(5)
    net = make_bn_cnn().train()
    with torch.no_grad():  # non-trivial running stats, so an accidental update is visible
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(7)
    saved = bn_state(net)
    x = torch.randn(12, 3, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    params = trainable_params(net)

    ok, reason = per_example_grads_supported(net)
    assert not ok and "BatchNorm2d" in reason
    with pytest.raises(ValueError, match="BatchNorm2d"):
        per_example_grads(net, params, x, y, F.cross_entropy)
    assert_same_buffers(net, saved)

    factory = functools.partial(functional_loss, net, loss_fn=F.cross_entropy)
    rows = microbatch_grads(factory, params, x, y, num_microbatches=4)
    assert rows.shape == (4, sum(p.numel() for p in params.values()))
    assert rows.dtype == torch.float64
    assert_same_buffers(net, saved)
    assert net.training

    ref_net = copy.deepcopy(net)  # its BN stats may move; the live net's must not
    ref = torch.stack(
        [batch_grad(ref_net, x[i : i + 3], y[i : i + 3], F.cross_entropy) for i in range(0, 12, 3)]
    )
    torch.testing.assert_close(rows, ref, rtol=1e-10, atol=1e-12)
    assert (ref - ref.mean(0)).abs().max() > 1e-3
    trace1, sq, _, _ = numpy_stats(ref.numpy(), batch=4)
    st = noise_stats(rows, examples_per_sample=3)
    assert st.trace_cov == pytest.approx(3 * trace1, rel=1e-6)
    assert st.grad_sq_norm == pytest.approx(sq, rel=1e-6)
    assert st.snr == pytest.approx(sq / (3 * trace1 / 12), rel=1e-6)
    assert (st.batch_size, st.num_samples) == (12, 4)

    with pytest.raises(ValueError, match="divisible"):
        microbatch_grads(factory, params, x, y, num_microbatches=5)
    with pytest.raises(ValueError, match="at least 2"):
        microbatch_grads(factory, params, x, y, num_microbatches=1)
    assert_same_buffers(net, saved)


def test_batchnorm_eval_mode_supported_and_buffers_untouched():
    torch.manual_seed(6)
    net = make_bn_cnn()
    net.train()(torch.randn(8, 3, 5, 5, dtype=torch.float64))  # move the running stats
    net.eval()
    saved = bn_state(net)
    ok, reason = per_example_grads_supported(net)
    assert ok and reason == ""
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    got = per_example_grads(net, trainable_params(net), x, y, F.cross_entropy)
    torch.testing.assert_close(got, loop_grads(net, x, y, F.cross_entropy))
    assert_same_buffers(net, saved)

    no_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    assert not per_example_grads_supported(no_stats)[0]
    assert per_example_grads_supported(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))[0]


# ---------------------------------------------------------------------------------------------
# noise_stats on synthetic rows


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

    # a network whose gradient is exactly zero: all-zero weights, loss independent of params
    net = nn.Linear(3, 2, bias=False).double()
    nn.init.zeros_(net.weight)
    x = torch.zeros(6, 3, dtype=torch.float64)
    st = noise_stats(
        per_example_grads(
            net, trainable_params(net), x, torch.zeros(6, dtype=torch.long), F.cross_entropy
        )
    )
    assert math.isnan(st.gns) and math.isnan(st.snr)
