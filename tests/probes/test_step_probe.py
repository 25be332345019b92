"""Step probes against independent recomputation, closed forms and observer invariance."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from harness import fit
from torch.nn import functional as F

from optprobe.estimators.identities import descent_bound, step_quantities
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


@pytest.mark.parametrize("scheme", ["same_batch", "next_batch"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_every_key_matches_independent_recomputation_float64(scheme, accumulate):
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()
    x, y = data()
    probe = StepProbe(scheme=scheme)
    opt = lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9, weight_decay=1e-3)  # noqa: E731
    _, _, rec, sink = fit(
        copy.deepcopy(net), x, y, [probe], steps=6, optimizer=opt, accumulate=accumulate
    )
    keys = [
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
        "descent_bound",
    ]
    logged = {k: list(sink.series(f"step/{k}").values()) for k in keys}
    n_expected = 6 if scheme == "same_batch" else 5  # next_batch: the last update has no z_{t+1}
    assert len(logged["loss_change"]) == n_expected
    max_lip = 0.0
    for t in range(n_expected):
        s = rec.steps[t]
        x_t, x_next = s.params, s.next_params
        eval_batches = s.batches if scheme == "same_batch" else rec.steps[t + 1].batches
        f_old, g_old = batch_loss_grad(net, x_t, eval_batches)
        f_new, g_new = batch_loss_grad(net, x_next, eval_batches)
        if scheme == "same_batch":  # the probe's g_t is the training step's raw gradient
            assert torch.allclose(g_old, flat(s.grads), rtol=1e-12, atol=1e-14)
        delta = flat(x_next) - flat(x_t)
        d = f_new - f_old
        prev = None if t == 0 else flat(rec.steps[t].params) - flat(rec.steps[t - 1].params)
        lip = (g_new - g_old).norm().item() / delta.norm().item()
        max_lip = max(max_lip, lip)
        expected = {
            "loss_change": d,
            "lin_old": (g_old @ delta).item(),
            "lin_new": (g_new @ delta).item(),
            "inst_gap": d - (g_new @ delta).item(),
            "inst_gap_old": d - (g_old @ delta).item(),
            "smooth_lip": lip,
            "smooth_eff": 2 * (d - (g_old @ delta).item()) / (delta @ delta).item(),
            "update_cos_old": F.cosine_similarity(g_old, delta, dim=0).item(),
            "update_cos_new": F.cosine_similarity(g_new, delta, dim=0).item(),
            "grad_norm": g_old.norm().item(),
            "update_norm": delta.norm().item(),
            "descent_bound": (g_old @ delta).item() + 0.5 * max_lip * (delta @ delta).item(),
        }
        if prev is not None:
            expected["update_cos_prev"] = F.cosine_similarity(delta, prev, dim=0).item()
        for k, v in expected.items():
            got = logged[k][t - 1] if k == "update_cos_prev" else logged[k][t]
            assert got == pytest.approx(v, rel=1e-10, abs=1e-13), (k, t)


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
    assert sink.series("step/frac_inst_gap_held")[max(sink.rows)] == 1.0
    assert probe.final_summary()["held"]["inst_gap"]["fraction"] == 1.0


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
        ({"smoothness_source": "x"}, "probes.step.smoothness_source"),
        ({"min_update_norm": -1}, "probes.step.min_update_norm"),
        ({"batch": "fixed"}, "probes.step.batch"),
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


def test_descent_bound_can_use_the_curvature_probes_lambda_max():
    from optprobe.probes.curvature import CurvatureProbe

    x, y = data()
    curv = CurvatureProbe(every_n_steps=1, lanczos_iters=60, tol=1e-8)
    step = StepProbe(smoothness_source="lambda_max")
    _, _, _, sink = fit(MLP((1, 4, 4), 3, hidden=(8,)).double(), x, y, [curv, step], steps=3)
    lam = sink.series("curv/lambda_max")
    ls = sink.series("step/L")
    assert ls and all(ls[s] == pytest.approx(lam[s], rel=1e-12) for s in ls)
    bound = sink.series("step/descent_bound")
    lin, norm = sink.series("step/lin_old"), sink.series("step/update_norm")
    for s in bound:
        assert bound[s] == pytest.approx(lin[s] + 0.5 * lam[s] * norm[s] ** 2, rel=1e-12)
