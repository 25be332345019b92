"""Per-example and micro-batch gradients against brute force: a plain autograd loop, one backward
per example, or a closed form; their noise statistics against numpy."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optprobe.batches import as_batch, num_examples
from optprobe.estimators.functional import functional_loss, supervised, trainable_params
from optprobe.estimators.noise_stats import NoiseStats, noise_stats
from optprobe.estimators.per_example import (
    microbatch_grads,
    per_example_grads,
    per_example_grads_supported,
    per_example_supported_in_training,
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
    assert stats.gns_minibatch == pytest.approx(gns, rel=1e-6)
    assert stats.snr_minibatch == pytest.approx(snr, rel=1e-6)
    assert stats.batch_size == batch
    assert stats.num_samples == rows.shape[0]


# ---------------------------------------------------------------------------------------------
# per_example_grads against brute force


def test_mlp_per_example_grads_and_stats_match_autograd_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    got = per_example_grads(net, trainable_params(net), (x, y), supervised(F.cross_entropy))
    ref = loop_grads(net, x, y, F.cross_entropy)
    assert got.shape == (12, 5 * 7 + 7 + 7 * 3 + 3) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # rows are genuinely different and average to the batch gradient (mean-reduced loss)
    assert (ref - ref.mean(0)).abs().max() > 1e-3
    torch.testing.assert_close(got.mean(0), batch_grad(net, x, y, F.cross_entropy))
    # chunked vmap gives the same rows
    chunked = per_example_grads(
        net, trainable_params(net), (x, y), supervised(F.cross_entropy), chunk_size=5
    )
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
    got = per_example_grads(net, trainable_params(net), (x, y), supervised(bce))
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
    got = per_example_grads(net, trainable_params(net), (inputs, targets), supervised(lm_loss))
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
    got = per_example_grads(net, params, (tokens, tokens.roll(-1, dims=1)), supervised(lm_loss))
    ref = loop_grads(net, tokens, tokens.roll(-1, dims=1), lm_loss)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_dropout_in_train_mode_runs_with_independent_masks():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 2)).double().train()
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    got = per_example_grads(net, trainable_params(net), (x, y), supervised(F.cross_entropy))
    assert torch.isfinite(got).all()
    net.eval()
    no_drop = per_example_grads(net, trainable_params(net), (x, y), supervised(F.cross_entropy))
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
        per_example_grads(net, params, (x, y), supervised(F.cross_entropy))
    assert_same_buffers(net, saved)

    factory = functools.partial(functional_loss, net, loss=supervised(F.cross_entropy))
    rows = microbatch_grads(factory, params, (x, y), num_microbatches=4)
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
    assert st.snr_minibatch == pytest.approx(sq / (3 * trace1 / 12), rel=1e-6)
    assert (st.batch_size, st.num_samples) == (12, 4)

    with pytest.raises(ValueError, match="divisible"):
        microbatch_grads(factory, params, (x, y), num_microbatches=5)
    with pytest.raises(ValueError, match="num_microbatches must be an integer >= 2"):
        microbatch_grads(factory, params, (x, y), num_microbatches=1)
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
    got = per_example_grads(net, trainable_params(net), (x, y), supervised(F.cross_entropy))
    torch.testing.assert_close(got, loop_grads(net, x, y, F.cross_entropy))
    assert_same_buffers(net, saved)

    no_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    assert not per_example_grads_supported(no_stats)[0]
    assert per_example_grads_supported(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))[0]


def test_supported_in_training_switches_to_train_mode_and_puts_modes_back():
    net = make_bn_cnn().eval()
    net[1].train()  # a mixed state, which a plain net.train()/net.eval() would not restore
    ok, reason = per_example_supported_in_training(net)
    assert not ok and "BatchNorm2d" in reason
    assert [m.training for m in net.modules()] == [False, False, True, False, False, False, False]


def test_zero_gradient_network_gives_nan_ratios():
    # a network whose gradient is exactly zero: all-zero weights, loss independent of params
    net = nn.Linear(3, 2, bias=False).double()
    nn.init.zeros_(net.weight)
    x = torch.zeros(6, 3, dtype=torch.float64)
    st = noise_stats(
        per_example_grads(
            net,
            trainable_params(net),
            (x, torch.zeros(6, dtype=torch.long)),
            supervised(F.cross_entropy),
        )
    )
    assert math.isnan(st.gns_minibatch) and math.isnan(st.snr_minibatch)


def test_dict_batch_per_example_grads_match_loop():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(10, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))

    def dict_loss(net, batch):
        return F.cross_entropy(net(batch["inputs"]), batch["labels"])

    got = per_example_grads(net, trainable_params(net), {"inputs": x, "labels": y}, dict_loss)
    torch.testing.assert_close(got, loop_grads(net, x, y, F.cross_entropy), rtol=1e-10, atol=1e-12)


def test_batch_whose_tensors_disagree_on_dim_0_is_refused():
    net = nn.Linear(3, 2).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.long)
    for check in (as_batch, num_examples):
        with pytest.raises(ValueError, match="disagree on the number of examples"):
            check((x, y))
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        per_example_grads(net, trainable_params(net), (x, y), supervised(F.cross_entropy))
    factory = functools.partial(functional_loss, net, loss=supervised(F.cross_entropy))
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        microbatch_grads(factory, trainable_params(net), (x, y), num_microbatches=2)
