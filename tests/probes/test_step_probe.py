"""Step probes against independent recomputation, closed forms and observer invariance."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from harness import fit
from torch.nn import functional as F

from optprobe.estimators.identities import descent_bound, simpson_quantities, step_quantities
from optprobe.models.simple import MLP, LogisticRegression
from optprobe.probes.step import StepProbe


def batch_loss_grad(net, params, batches):
    """Mean loss and flat gradient over micro-batches, by plain autograd on a copy of net."""
    model = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    model.zero_grad()
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(model(x), y) / len(batches)
        loss.backward()
        losses.append(loss.item())
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    return sum(losses), grad


def flat(d):
    return torch.cat([v.reshape(-1) for v in d.values()]).double()


def data(n=96, dim=(1, 4, 4), classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *dim, generator=g, dtype=dtype)
    w = torch.randn(classes, math.prod(dim), generator=g, dtype=dtype)
    return x, (x.flatten(1) @ w.T).argmax(1)


STEP_KEYS = (
    "loss_change",
    "lin_old",
    "lin_new",
    "inst_gap",
    "inst_gap_old",
    "smooth_lip",
    "smooth_eff",
    "update_cos_old",
    "update_cos_new",
    "update_cos_prev",
    "grad_norm",
    "update_norm",
    "L_past",
    "descent_bound_past",
)


def expected_step_keys(net, rec, t, eval_batches, max_lip_before):
    """Every step key of update t recomputed by plain autograd on ``eval_batches``."""
    s = rec.steps[t]
    f_old, g_old = batch_loss_grad(net, s.params, eval_batches)
    f_new, g_new = batch_loss_grad(net, s.next_params, eval_batches)
    delta = flat(s.next_params) - flat(s.params)
    d = f_new - f_old
    lin_old, lin_new = (g_old @ delta).item(), (g_new @ delta).item()
    expected = {
        "loss_change": d,
        "lin_old": lin_old,
        "lin_new": lin_new,
        "inst_gap": d - lin_new,
        "inst_gap_old": d - lin_old,
        "smooth_lip": (g_new - g_old).norm().item() / delta.norm().item(),
        "smooth_eff": 2 * (d - lin_old) / (delta @ delta).item(),
        "update_cos_old": F.cosine_similarity(g_old, delta, dim=0).item(),
        "update_cos_new": F.cosine_similarity(g_new, delta, dim=0).item(),
        "grad_norm": g_old.norm().item(),
        "update_norm": delta.norm().item(),
    }
    if max_lip_before is not None:  # L_past: the earlier probed steps only
        expected["L_past"] = max_lip_before
        expected["descent_bound_past"] = lin_old + 0.5 * max_lip_before * (delta @ delta).item()
    if t > 0:
        prev = flat(rec.steps[t].params) - flat(rec.steps[t - 1].params)
        expected["update_cos_prev"] = F.cosine_similarity(delta, prev, dim=0).item()
    return expected, g_old


@pytest.mark.parametrize("scheme", ["same_batch", "fresh_batch"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_every_key_matches_independent_recomputation_float64(scheme, accumulate):
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()
    x, y = data()
    probe = StepProbe(scheme=scheme)
    prefix = {"same_batch": "step", "fresh_batch": "step_fresh"}[scheme]
    assert probe.prefix == prefix
    opt = lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9, weight_decay=1e-3)  # noqa: E731
    _, _, rec, sink = fit(
        copy.deepcopy(net), x, y, [probe], steps=6, optimizer=opt, accumulate=accumulate
    )
    logged = {k: sink.series(f"{prefix}/{k}") for k in STEP_KEYS}
    assert not sink.series("step/descent_bound")  # the L choice is in every bound's name
    n_expected = 6 if scheme == "same_batch" else 5  # fresh_batch: the last update has no z_{t+1}
    steps = sorted(logged["loss_change"])
    assert len(steps) == n_expected
    assert sorted(logged["descent_bound_past"]) == steps[1:]  # no earlier step at the first
    max_lip = None
    for t, step in enumerate(steps):
        s = rec.steps[t]
        eval_batches = s.batches if scheme == "same_batch" else rec.steps[t + 1].batches
        expected, g_old = expected_step_keys(net, rec, t, eval_batches, max_lip)
        if scheme == "same_batch":  # the probe's g_t is the training step's raw gradient
            assert torch.allclose(g_old, flat(s.grads), rtol=1e-12, atol=1e-14)
        for k, v in expected.items():
            assert logged[k][step] == pytest.approx(v, rel=1e-10, abs=1e-13), (k, t)
        max_lip = max(max_lip or 0.0, expected["smooth_lip"])


def test_logistic_regression_is_convex_along_every_step():
    torch.manual_seed(1)
    x, y = data(n=128, dim=(1, 8, 8), classes=4, seed=1, dtype=torch.float64)
    net = LogisticRegression((1, 8, 8), 4).double()
    probe = StepProbe()
    _, _, _, sink = fit(
        net, x, y, [probe], steps=20, batch_size=32, optimizer=lambda p: torch.optim.SGD(p, lr=1.0)
    )
    gaps = list(sink.series("step/inst_gap").values())
    gaps_old = list(sink.series("step/inst_gap_old").values())
    assert len(gaps) == 20
    assert max(gaps) <= 1e-12 and min(gaps_old) >= -1e-12
    assert sink.series("step/frac_inst_gap_valid_held")[max(sink.rows)] == 1.0
    assert probe.final_summary()["held"]["inst_gap:valid:same_batch"]["fraction"] == 1.0


def test_quadratic_closed_form():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    eigs = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 7.0], dtype=torch.float64)
    a = q @ torch.diag(eigs) @ q.T
    x_t = torch.randn(6, generator=g, dtype=torch.float64)
    delta = -0.1 * (a @ x_t) + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)
    x_next = x_t + delta
    f = lambda v: 0.5 * v @ a @ v  # noqa: E731
    vals = step_quantities(f(x_t).item(), f(x_next).item(), a @ x_next, delta, a @ x_t)
    assert eigs.min() - 1e-12 <= vals["smooth_eff"] <= eigs.max() + 1e-12
    assert eigs.min() - 1e-12 <= vals["smooth_lip"] <= eigs.max() + 1e-12
    # with L = the curvature along the step the descent lemma is an equality on a quadratic
    exact = descent_bound(vals["lin_old"], vals["update_norm"], vals["smooth_eff"])
    assert exact == pytest.approx(vals["loss_change"], rel=1e-12)
    assert (
        descent_bound(vals["lin_old"], vals["update_norm"], eigs.max().item())
        >= vals["loss_change"]
    )
    # convex: both gaps have the convex sign
    assert vals["inst_gap"] <= 0 <= vals["inst_gap_old"]


def test_simpson_is_exact_for_a_quartic():
    """Simpson's rule integrates the cubic φ'(s) of a quartic f along the step exactly."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = a @ a.T
    b, c = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(2))
    f = lambda v: 0.5 * v @ a @ v + (b @ v) ** 3 + (c @ v) ** 4  # noqa: E731
    grad = torch.func.grad(f)
    x_t = torch.randn(5, generator=g, dtype=torch.float64)
    delta = 0.3 * torch.randn(5, generator=g, dtype=torch.float64)
    vals = simpson_quantities(grad(x_t), grad(x_t + 0.5 * delta), grad(x_t + delta), delta)
    d = (f(x_t + delta) - f(x_t)).item()
    assert vals["loss_change_quad"] == pytest.approx(d, rel=1e-12)
    expected_eff = 2 * (d - (grad(x_t) @ delta).item()) / (delta @ delta).item()
    assert vals["smooth_eff_quad"] == pytest.approx(expected_eff, rel=1e-10)


@pytest.mark.parametrize("scheme", ["same_batch", "fresh_batch"])
def test_quadrature_keys_match_independent_recomputation_float64(scheme):
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()
    x, y = data()
    probe = StepProbe(scheme=scheme, quadrature=True)
    opt = lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9)  # noqa: E731
    _, _, rec, sink = fit(copy.deepcopy(net), x, y, [probe], steps=5, optimizer=opt)
    quad = sink.series(f"{probe.prefix}/loss_change_quad")
    eff = sink.series(f"{probe.prefix}/smooth_eff_quad")
    direct = sink.series(f"{probe.prefix}/loss_change")
    assert sorted(quad) == sorted(eff) == sorted(direct) and len(quad) >= 4
    for t, step in enumerate(sorted(quad)):
        s = rec.steps[t]
        batches = s.batches if scheme == "same_batch" else rec.steps[t + 1].batches
        mid = {k: 0.5 * (s.params[k] + s.next_params[k]) for k in s.params}
        grads = [batch_loss_grad(net, p, batches)[1] for p in (s.params, mid, s.next_params)]
        delta = flat(s.next_params) - flat(s.params)
        expected = simpson_quantities(*grads, delta)
        assert quad[step] == pytest.approx(expected["loss_change_quad"], rel=1e-10, abs=1e-13)
        assert eff[step] == pytest.approx(expected["smooth_eff_quad"], rel=1e-10)
        # and Simpson's D is the loss difference up to its O(‖Δ‖⁵) error
        assert quad[step] == pytest.approx(direct[step], rel=1e-2, abs=1e-6)


def test_tiny_updates_are_skipped_and_counted():
    x, y = data()
    probe = StepProbe(min_update_norm=1e9)
    _, _, _, sink = fit(MLP((1, 4, 4), 3, hidden=(8,)).double(), x, y, [probe], steps=4)
    assert probe.num_skipped == 4 and probe.num_probed == 0
    assert list(sink.series("step/skipped").values()) == [1, 2, 3, 4]
    assert not sink.series("step/inst_gap")


def test_dropout_is_refused_at_setup():
    from optprobe.models.gpt import GPT

    net = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=16, dropout=0.1)
    x = torch.randint(0, 11, (32, 8))
    with pytest.raises(ValueError, match="dropout"):
        fit(net, x, x, [StepProbe()], steps=1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"every_n_steps": 0}, "probes.step.every_n_steps"),
        ({"scheme": "bogus"}, "probes.step.scheme"),
        ({"scheme": "same_batch", "name": "step_fresh"}, "probes.step_fresh.scheme"),
        ({"min_update_norm": -1}, "probes.step.min_update_norm"),
        ({"batch": "fixed"}, "probes.step.batch"),
        ({"quadrature": True, "old_point_keys": False}, "probes.step.quadrature needs"),
        ({"quadrature": "yes"}, "probes.step.quadrature"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepProbe(**kwargs)


def test_state_dict_round_trip_continues_identically():
    x, y = data()
    net = MLP((1, 4, 4), 3, hidden=(8,)).double()
    opt = lambda p: torch.optim.SGD(p, lr=0.2)  # noqa: E731  (stateless: phases chain exactly)
    first = StepProbe()
    _, module, _, _ = fit(net, x, y, [first], steps=4, optimizer=opt)
    restored, fresh = StepProbe(), StepProbe()
    restored.load_state_dict(copy.deepcopy(first.state_dict()))
    series = {}
    for name, probe in (("original", first), ("restored", restored), ("fresh", fresh)):
        _, _, _, sink = fit(
            copy.deepcopy(module.net), x, y, [probe], steps=4, optimizer=opt, seed=1
        )
        series[name] = {
            k: sink.series(k) for k in sink.rows[max(sink.rows)] if k.startswith("step/")
        }
    assert series["original"] == series["restored"]
    assert series["fresh"]["step/cum_loss_change"] != series["original"]["step/cum_loss_change"]
    assert first.final_summary() == restored.final_summary()


def test_the_scheme_decides_the_key_prefix():
    """Keys say which scheme made them: step/* is the same-batch scheme, step_fresh/* the
    fresh-batch one, whatever the entry is called; ``auto`` is a choice between the two
    quantities (and next_batch the fresh-batch scheme's old name)."""
    cases = [
        ({}, "step", "same_batch"),
        ({"scheme": "fresh_batch"}, "step_fresh", "fresh_batch"),
        ({"scheme": "fresh_batch", "name": "step_fresh"}, "step_fresh", "fresh_batch"),
        ({"scheme": "next_batch"}, "step_fresh", "fresh_batch"),
        ({"scheme": "auto"}, "step", "same_batch"),
        ({"scheme": "auto", "old_point_keys": False}, "step_fresh", "fresh_batch"),
        ({"name": "my_step"}, "my_step", "same_batch"),
    ]
    for kwargs, prefix, scheme in cases:
        probe = StepProbe(**kwargs)
        assert (probe.prefix, probe.scheme) == (prefix, scheme), kwargs
        assert probe.resolved_settings() == {"scheme": scheme}


def test_both_schemes_run_side_by_side_without_changing_the_trajectory():
    """A same-batch and a fresh-batch step probe in one run: each logs its own keys, and the
    trajectory is the one without probes."""
    x, y = data()
    net = MLP((1, 4, 4), 3, hidden=(8,)).double()
    opt = lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9)  # noqa: E731
    same = StepProbe(quadrature=True)  # its midpoint pass must not touch training either
    fresh = StepProbe(scheme="fresh_batch", name="step_fresh")
    _, probed, _, sink = fit(copy.deepcopy(net), x, y, [same, fresh], steps=5, optimizer=opt)
    _, plain, _, _ = fit(copy.deepcopy(net), x, y, [], steps=5, optimizer=opt)
    for a, b in zip(probed.net.parameters(), plain.net.parameters()):
        assert torch.equal(a, b)
    assert len(sink.series("step/loss_change")) == 5
    assert len(sink.series("step_fresh/loss_change")) == 4
    assert sink.series("step/loss_change") != sink.series("step_fresh/loss_change")
    assert "inst_gap:valid:fresh_batch" in fresh.final_summary()["held"]
    assert "step_fresh/frac_descent_bound_past_held" in {k for r in sink.rows.values() for k in r}


class ScaleThroughData(pl.Callback):
    """Writes every parameter through ``.data`` after each step (after the probes), as an EMA
    swap would: the version counters do not see it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for p in pl_module.net.parameters():
            p.data.mul_(0.9)


@pytest.mark.parametrize("scheme", ["same_batch", "fresh_batch"])
def test_x_t_is_copied_once_per_step_and_writes_between_steps_are_seen(scheme, monkeypatch):
    """x_{t+1} flattened at a step's end is reused as the next step's x_t (one float64 copy
    of the parameters per step, not two), unless a parameter was written in between; then
    Δ_t is still x_{t+1} − x_t of the step itself."""
    import optprobe.probes.step as step_module

    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()
    n_params = sum(p.numel() for p in net.parameters())
    full_copies = []
    counting = lambda tensors, **kw: _count_full(full_copies, n_params, tensors, **kw)  # noqa: E731
    monkeypatch.setattr(step_module, "flatten", counting)
    x, y = data()
    prefix = {"same_batch": "step", "fresh_batch": "step_fresh"}[scheme]
    fit(copy.deepcopy(net), x, y, [StepProbe(scheme=scheme)], steps=6)
    assert len(full_copies) == 1 + 6  # x_0 at the first step, then x_{t+1} at each step's end

    full_copies.clear()
    _, _, rec, sink = fit(
        copy.deepcopy(net), x, y, [StepProbe(scheme=scheme), ScaleThroughData()], steps=6
    )
    norms = sink.series(f"{prefix}/update_norm")
    assert len(norms) >= 5
    for t, step in enumerate(sorted(norms)):
        s = rec.steps[t]
        expected = (flat(s.next_params) - flat(s.params)).norm().item()
        assert norms[step] == pytest.approx(expected, rel=1e-12)


def _count_full(calls, n_params, tensors, **kw):
    from optprobe.estimators.functional import flatten

    out = flatten(tensors, **kw)
    if out.numel() == n_params:
        calls.append(out)
    return out


class CacheWatch(pl.Callback):
    """After each step (and after the probe): whether the probe holds an x copy for later."""

    def __init__(self, probe: StepProbe):
        self.probe, self.held = probe, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.held.append(self.probe._x_cache is not None)


def test_the_x_copy_is_kept_only_for_a_next_step_that_uses_it():
    """At cadence 4 the steps 3, 4, 7 and 8 record Δ; a copy of x_{t+1} outlives step t only
    where step t + 1 records too (after steps 3 and 7), not through the unprobed steps."""
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()
    x, y = data()
    probe = StepProbe(every_n_steps=4, start_step=4)
    watch = CacheWatch(probe)
    fit(copy.deepcopy(net), x, y, [probe, watch], steps=9)
    assert [t for t, held in enumerate(watch.held) if held] == [3, 7]
