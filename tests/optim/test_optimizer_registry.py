"""The registry's stability thresholds and preconditioners against the real optimizers.

Ground truths: (1) each torch optimizer run on a quadratic f = lam/2 ||x||^2 converges just
below its registered threshold and diverges just above it (adaptive ones with eps so large
that P = sqrt(v) + eps is constant, which is the regime the formulas are about); (2) the
preconditioner and step size the registry reads reproduce the step the optimizer applied,
Delta = -lr g / P, for rules where that is exact; (3) undefined thresholds are NaN with a
reason, never a number.
"""

from __future__ import annotations

import math

import lion_pytorch
import pytest
import schedulefree
import torch
from harness import fit, make_data, make_mlp

from optprobe.estimators.functional import supervised
from optprobe.models.lit_module import cross_entropy
from optprobe.optim.muon import MuonWithAdamW
from optprobe.optim.registry import facts_for, optimizer_geometry
from optprobe.probes.curvature import CurvatureProbe
from optprobe.probes.target import ProbedModel

LAM, EPS_BIG = 3.0, 1e14
# (factory lr -> optimizer, the preconditioner's constant value P)
STABLE_RULES = {
    "sgd": (lambda p, lr: torch.optim.SGD(p, lr=lr), 1.0),
    "heavy_ball": (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8), 1.0),
    "dampened": (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.6, dampening=0.5), 1.0),
    "nesterov": (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True), 1.0),
    "adam": (lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.999), eps=EPS_BIG), EPS_BIG),
    "adamw": (lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0, eps=EPS_BIG), EPS_BIG),
    "rmsprop": (lambda p, lr: torch.optim.RMSprop(p, lr=lr, eps=EPS_BIG), EPS_BIG),
    "rmsprop_mom": (
        lambda p, lr: torch.optim.RMSprop(p, lr=lr, momentum=0.7, eps=EPS_BIG),
        EPS_BIG,
    ),
    "adagrad": (lambda p, lr: torch.optim.Adagrad(p, lr=lr, eps=EPS_BIG), EPS_BIG),
}
EXPECTED = {  # the closed forms, written out
    "sgd": 2.0,
    "heavy_ball": 3.6,
    "dampened": 3.2 / 0.5,
    "nesterov": 3.8 / 2.8,
    "adam": 38.0,
    "adamw": 38.0,
    "rmsprop": 2.0,
    "rmsprop_mom": 3.4,
    "adagrad": 2.0,
}


def run_quadratic(make, precond: float, ratio: float, steps: int = 300) -> tuple[float, float]:
    """(largest, final) |x| on f = LAM/2 x^2 from x = 1 at lr * LAM / P = ratio, after 200
    steps at lr = 0 that fill the optimizer's averages (Adam's bias correction would otherwise
    kick the first steps far beyond the steady-state regime the threshold is about)."""
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = make([x], 0.0)
    sizes = []
    for t in range(200 + steps):
        if t == 200:
            for group in opt.param_groups:
                group["lr"] = ratio * precond / LAM
        opt.zero_grad()
        (0.5 * LAM * (x**2).sum()).backward()
        opt.step()
        sizes.append(x.abs().item())
    return max(sizes[200:]), sizes[-1]


@pytest.mark.parametrize("rule", sorted(STABLE_RULES))
def test_threshold_is_the_stability_limit_of_the_real_optimizer(rule):
    make, precond = STABLE_RULES[rule]
    probe = make([torch.zeros(1, requires_grad=True)], 0.1)
    threshold = facts_for(probe).threshold_of(probe)
    assert threshold == pytest.approx(EXPECTED[rule], rel=1e-12)
    assert run_quadratic(make, precond, 0.97 * threshold)[1] < 1e-3  # converges
    assert run_quadratic(make, precond, 1.03 * threshold)[0] > 1e6  # diverges (until P grows)


QUADRATIC_RULES = {
    "adam_beta1_0": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.0, 0.99)),
    "amsgrad_beta1_0": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.0, 0.9), amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9),
    "rmsprop_centered": lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, centered=True),
    "adagrad_decay": lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.3),
}


@pytest.mark.parametrize("rule", sorted(QUADRATIC_RULES))
def test_preconditioner_and_step_size_reproduce_the_applied_step(rule):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    hess = a @ a.T + torch.eye(6, dtype=torch.float64)
    x = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()
    opt = QUADRATIC_RULES[rule]([x])
    facts = facts_for(opt)
    for step in range(4):
        lr = facts.lr(opt)
        opt.zero_grad()
        (0.5 * x @ hess @ x).backward()
        g, before = x.grad.clone(), x.detach().clone()
        opt.step()
        precond = facts.preconditioner(opt, {"x": x})
        assert precond is not None and precond.shape == (6,), step
        torch.testing.assert_close(x.detach() - before, -lr * g / precond, rtol=1e-9, atol=0)


def test_schedule_free_adamw_preconditioner_reproduces_the_z_step():
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    lr = 0.01
    opt = schedulefree.AdamWScheduleFree([x], lr=lr, betas=(0.9, 0.95))
    opt.train()
    facts = facts_for(opt)
    assert facts.preconditioner(opt, {"x": x}) is None  # no state before the first step
    for _ in range(3):
        opt.zero_grad()
        (x**4).sum().backward()
        g = x.grad.clone()
        z_before = opt.state[x]["z"].clone() if "z" in opt.state[x] else x.detach().clone()
        opt.step()
        precond = facts.preconditioner(opt, {"x": x})
        torch.testing.assert_close(
            opt.state[x]["z"] - z_before, -lr * g / precond, rtol=1e-9, atol=0
        )


def _undefined_optimizers(params):
    from optprobe.optim.soap import soap

    net = make_mlp()
    return {
        "lion": lion_pytorch.Lion(params, lr=1e-3),
        "muon": MuonWithAdamW(net),
        "schedule_free_sgd": schedulefree.SGDScheduleFree(params, lr=0.1),
        "schedule_free_adamw": schedulefree.AdamWScheduleFree(params),
        "adafactor": torch.optim.Adafactor(params),
        "soap": soap(params),
        "asgd": torch.optim.ASGD(params),  # not in the registry
    }


def test_undefined_thresholds_are_nan_with_a_reason():
    params = [torch.zeros(3, 2, requires_grad=True)]
    for name, opt in _undefined_optimizers(params).items():
        facts = facts_for(opt)
        assert math.isnan(facts.threshold_of(opt)), name
        assert facts.threshold is None and len(facts.reason) > 20, name
    assert "ASGD" in facts_for(torch.optim.ASGD(params)).reason


def test_curvature_probe_logs_nan_threshold_and_the_reason_for_lion():
    x, y = make_data()
    net = make_mlp()
    lr = 1e-3
    probe = CurvatureProbe(every_n_steps=1, lanczos_iters=30, trace_max_matvecs=2)
    _, _, _, sink = fit(
        net, x, y, callbacks=[probe], steps=3, optimizer=lambda p: lion_pytorch.Lion(p, lr=lr)
    )
    thresholds, ratios = (
        sink.series("curv/stability_threshold"),
        sink.series("curv/sharpness_ratio"),
    )
    assert sorted(thresholds) == [0, 1, 2] and all(math.isnan(v) for v in thresholds.values())
    lams = sink.series("curv/lambda_max")
    assert all(ratios[t] == pytest.approx(lr * lams[t]) for t in ratios)
    assert probe.num_skipped == 0 and probe.num_probed == 3
    assert "lion" in probe.final_summary()["threshold_undefined"]
    # a defined threshold is never flagged
    values, _ = CurvatureProbe(lanczos_iters=5, trace_max_matvecs=2).measure(
        ProbedModel(net, supervised(cross_entropy)),
        (x, y),
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5),
    )
    assert values["curv/stability_threshold"] == pytest.approx(3.0)


def test_each_optimizer_names_its_own_geometry():
    net = make_mlp()
    params = dict(net.named_parameters())
    muon = optimizer_geometry(MuonWithAdamW(net), params)
    assert muon.kind == "spectral" and muon.shapes == tuple(p.shape for p in params.values())
    assert optimizer_geometry(lion_pytorch.Lion(net.parameters()), params).kind == "linf"
    assert optimizer_geometry(torch.optim.SGD(net.parameters(), lr=0.1), params) is None
    adam = torch.optim.Adam(net.parameters(), lr=0.1, eps=1e-3)
    assert optimizer_geometry(adam, params) is None  # no state before the first step
    x, y = make_data()
    cross_entropy(net(x), y).backward()
    adam.step()
    grad = torch.cat([p.grad.reshape(-1) for p in params.values()]).double()
    # after one step: v̂ = g², so P = |g| + eps
    geometry = optimizer_geometry(adam, params)
    assert geometry.kind == "diagonal"
    assert torch.allclose(geometry.precond, grad.abs() + 1e-3, rtol=1e-12, atol=0)
