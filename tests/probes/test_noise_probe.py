"""Integration tests of the gradient-noise probe callback, and of observer invariance.

References are brute force: per-example (or per-micro-batch) gradients by a plain autograd
loop over a copy of the network loaded with the parameters x_t and the batch that the harness
recorder saw at step t.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from harness import StartedFlag, fit, make_data, make_mlp
from torch import Tensor, nn

from optprobe.models.lit_module import cross_entropy
from optprobe.probes.curvature import CurvatureProbe
from optprobe.probes.noise import NoiseProbe

KEYS = (
    "noise/trace_cov",
    "noise/grad_sq_norm",
    "noise/grad_sq_norm_unbiased",
    "noise/gns",
    "noise/snr",
    "noise/gns_minibatch",
    "noise/snr_minibatch",
    "noise/batch_size",
)
UNDEFINED_WHEN_NOISE_DOMINATES = ("noise/gns", "noise/snr")  # NaN where |G|^2_u <= 0


class TinyCNN(nn.Module):
    """Conv -> BatchNorm2d -> ReLU -> Dropout -> Linear (BatchNorm couples the examples)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def brute_force_grads(net: nn.Module, params: dict[str, Tensor], groups) -> Tensor:
    """One flat float64 gradient of the mean loss per (inputs, targets) group, by autograd."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(params[name])
    rows = []
    for x, y in groups:
        loss = cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])
        rows.append(torch.cat([g.reshape(-1) for g in grads]).to(torch.float64))
    return torch.stack(rows)


def reference(rows: Tensor, per_row: int) -> dict[str, float]:
    """The logged keys by hand; B_simple from the two-batch-size estimate of |G|^2 with
    B_small = per_row, B_big = n * per_row (McCandlish et al. 2018, A.1)."""
    n = rows.shape[0]
    mean = rows.mean(0)
    trace_cov = per_row * sum(float((r - mean) @ (r - mean)) for r in rows) / (n - 1)
    sq = float(mean @ mean)
    batch = n * per_row
    small_sq = float((rows**2).sum(1).mean())
    sq_u = (batch * sq - per_row * small_sq) / (batch - per_row)
    return {
        "noise/trace_cov": trace_cov,
        "noise/grad_sq_norm": sq,
        "noise/grad_sq_norm_unbiased": sq_u,
        "noise/gns": trace_cov / sq_u if sq_u > 0 else math.nan,
        "noise/snr": sq_u / (trace_cov / batch) if sq_u > 0 else math.nan,
        "noise/gns_minibatch": trace_cov / sq,
        "noise/snr_minibatch": sq / (trace_cov / batch),
        "noise/batch_size": float(batch),
    }


def assert_logged(sink, t: int, expected: dict[str, float]) -> None:
    for key in KEYS:
        got = sink.series(key)[t]
        if math.isnan(expected[key]):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(expected[key], rel=1e-6), key


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_per_example_values_match_brute_force(chunk_size):
    x, y = make_data()
    net = make_mlp()
    probe = NoiseProbe(every_n_steps=1, chunk_size=chunk_size)
    _, _, recorder, sink = fit(net, x, y, callbacks=[probe], steps=3)
    assert probe.method_used == "per_example"
    assert sorted(sink.series("noise/trace_cov")) == [0, 1, 2]
    assert probe.num_skipped == 0
    defined = 0
    for t, rec in enumerate(recorder.steps):
        bx, by = rec.batches[0]
        rows = brute_force_grads(
            net, rec.params, [(bx[i : i + 1], by[i : i + 1]) for i in range(16)]
        )
        # the mean per-example gradient is the raw training gradient g_t of the step
        g_t = torch.cat([g.reshape(-1) for g in rec.grads.values()])
        torch.testing.assert_close(rows.mean(0), g_t, rtol=1e-10, atol=1e-12)
        expected = reference(rows, per_row=1)
        assert_logged(sink, t, expected)
        defined += expected["noise/grad_sq_norm_unbiased"] > 0
    # random labels: noise dominates on some steps (NaN B_simple), not on all
    assert 0 < defined < 3


def test_microbatch_values_match_brute_force():
    x, y = make_data()
    net = make_mlp()
    probe = NoiseProbe(every_n_steps=2, method="microbatch", num_microbatches=4)
    _, _, recorder, sink = fit(net, x, y, callbacks=[probe], steps=3)
    assert sorted(sink.series("noise/gns")) == [0, 2]
    for t in (0, 2):
        rec = recorder.steps[t]
        bx, by = rec.batches[0]
        groups = [(bx[i : i + 4], by[i : i + 4]) for i in range(0, 16, 4)]
        expected = reference(brute_force_grads(net, rec.params, groups), per_row=4)
        assert_logged(sink, t, expected)


def test_batchnorm_auto_uses_microbatches():
    x, y = make_data(48)
    torch.manual_seed(0)
    probe = NoiseProbe(every_n_steps=1, method="auto", num_microbatches=3)
    assert probe.resolved_settings() == {}  # auto: decided in setup, from the network
    _, _, _, sink = fit(TinyCNN().double(), x, y, callbacks=[probe], steps=2, batch_size=16)
    assert probe.method_used == "microbatch"
    assert probe.resolved_settings() == {"method": "microbatch"}
    assert probe.final_summary()["method"] == "microbatch"
    for key in KEYS:
        series = sink.series(key)
        assert sorted(series) == [0, 1], key
        if key in UNDEFINED_WHEN_NOISE_DOMINATES:
            continue
        assert all(math.isfinite(v) for v in series.values()), key
    unbiased = sink.series("noise/grad_sq_norm_unbiased")
    for key in UNDEFINED_WHEN_NOISE_DOMINATES:
        for t, v in sink.series(key).items():
            assert math.isnan(v) == (unbiased[t] <= 0) and not math.isinf(v), (key, t)
    assert probe.num_skipped == 0
    # 16 examples in 3 micro-batches of 5: the last row is dropped
    assert set(sink.series("noise/batch_size").values()) == {15.0}
    assert sink.series("noise/trace_cov")[0] > 0


def test_per_example_on_batchnorm_fails_at_setup():
    x, y = make_data(32)

    started = StartedFlag()
    torch.manual_seed(0)
    probe = NoiseProbe(every_n_steps=1, method="per_example")
    with pytest.raises(ValueError, match="BatchNorm2d 'bn'.*method=microbatch"):
        fit(TinyCNN().double(), x, y, callbacks=[started, probe], steps=2)
    assert not started.started and probe.num_probed == 0


def test_undefined_noise_scale_is_nan_not_a_skipped_step():
    """Noise dominates: the unbiased |G|^2 is < 0, so B_simple and the SNR are undefined (NaN);
    the step is still probed and every other key is logged."""
    x, y = make_data(8)
    x, y = torch.cat([x, -x]), torch.cat([y, y])  # pairs (x, y), (-x, y): gradients ~ cancel
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False)).double()
    with torch.no_grad():
        net[1].weight.mul_(0.01)  # near zero: softmax ~ uniform at x and -x
    probe = NoiseProbe(every_n_steps=1)
    _, _, recorder, sink = fit(net, x, y, callbacks=[probe], steps=3, batch_size=16)
    assert probe.method_used == "per_example"
    assert probe.num_probed == 3 and probe.num_skipped == 0
    assert sink.series("noise/skipped") == {}
    for t, rec in enumerate(recorder.steps):
        bx, by = rec.batches[0]
        rows = brute_force_grads(
            net, rec.params, [(bx[i : i + 1], by[i : i + 1]) for i in range(16)]
        )
        expected = reference(rows, per_row=1)
        assert expected["noise/grad_sq_norm_unbiased"] < 0
        assert_logged(sink, t, expected)
        assert math.isnan(sink.series("noise/gns")[t]) and math.isnan(sink.series("noise/snr")[t])
        # the minibatch ratio is defined and biased: above B, which B_simple never is in
        # expectation
        assert sink.series("noise/gns_minibatch")[t] > 16


def test_non_finite_noise_is_skipped_not_fatal():
    x, y = make_data()
    x[:, 0, 0, 0] = math.nan
    probe = NoiseProbe(every_n_steps=1)
    _, _, recorder, sink = fit(make_mlp(), x, y, callbacks=[probe], steps=2)
    assert len(recorder.steps) == 2
    assert sink.series("noise/skipped") == {0: 1.0, 1: 2.0}
    assert sink.series("noise/gns") == {}


def _run_cnn(callbacks):
    x, y = make_data(96, seed=1, dtype=torch.float32)
    torch.manual_seed(0)
    net = TinyCNN(dropout=0.3)
    opt = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)  # noqa: E731
    trainer, module, recorder, sink = fit(net, x, y, callbacks=callbacks, steps=6, optimizer=opt)
    return trainer, module, recorder, sink, torch.get_rng_state()


def test_probes_do_not_change_the_trajectory():
    probes = [
        CurvatureProbe(every_n_steps=1, lanczos_iters=8, trace_max_matvecs=3, esd=False),
        NoiseProbe(every_n_steps=1),
    ]
    with_p = _run_cnn(probes)
    without = _run_cnn([])
    assert sorted(with_p[3].series("curv/lambda_max")) == list(range(6))
    assert sorted(with_p[3].series("noise/trace_cov")) == list(range(6))
    assert probes[1].method_used == "microbatch"
    (trainer_a, module_a, rec_a, _, rng_a), (trainer_b, module_b, rec_b, _, rng_b) = with_p, without
    for (name, a), (_, b) in zip(module_a.net.named_parameters(), module_b.net.named_parameters()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(module_a.net.named_buffers(), module_b.net.named_buffers()):
        assert torch.equal(a, b), name
    state_a, state_b = trainer_a.optimizers[0].state, trainer_b.optimizers[0].state
    for a, b in zip(module_a.net.parameters(), module_b.net.parameters()):
        assert torch.equal(state_a[a]["momentum_buffer"], state_b[b]["momentum_buffer"])
    for step_a, step_b in zip(rec_a.steps, rec_b.steps, strict=True):
        for name in step_a.grads:
            assert torch.equal(step_a.grads[name], step_b.grads[name]), name
    assert torch.equal(rng_a, rng_b)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"every_n_steps": 0}, "probes.noise.every_n_steps"),
        ({"method": "bogus"}, "probes.noise.method"),
        ({"num_microbatches": 1}, "probes.noise.num_microbatches"),
        ({"chunk_size": 0}, "probes.noise.chunk_size"),
    ],
)
def test_argument_validation(kwargs, key):
    with pytest.raises(ValueError, match=key):
        NoiseProbe(**kwargs)
