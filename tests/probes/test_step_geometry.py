"""The step probe's keys in the optimizer's own norm (``*_P``) against real optimizers.

Ground truths: (1) Adagrad's P = √(Σ_s g_s²) + ε rebuilt from the recorded raw gradients, and
g⁺ by plain autograd, give every ``_P`` key independently; (2) Adam with β1 = 0 steps
Δ = −lr g / P exactly, so ⟨g, Δ⟩ = −‖Δ‖_P² / lr and ‖Δ‖_P = lr ‖g‖_{P,*} hold only if P is the
one that step used (read after it); (3) Lion's sign step has ‖Δ‖_∞ = lr; (4) SGD has no
geometry and logs no ``_P`` key; (5) reading P leaves the trajectory unchanged.
"""

from __future__ import annotations

import copy
import math

import lion_pytorch
import pytest
import torch
from harness import fit
from test_step_probe import batch_loss_grad, data, flat

from optprobe.models.simple import MLP
from optprobe.probes.step import StepProbe

GEOMETRY_KEYS = ("update_norm_P", "smooth_lip_P", "grad_norm_P")


def mlp():
    torch.manual_seed(0)
    return MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()


def logged(sink, prefix="step"):
    keys = (*GEOMETRY_KEYS, "lin_old", "L_past_P", "descent_bound_past_P")
    return {k: sink.series(f"{prefix}/{k}") for k in keys}


def test_adagrad_keys_match_a_preconditioner_rebuilt_from_the_gradients():
    net, (x, y), eps = mlp(), data(), 1e-10
    opt = lambda p: torch.optim.Adagrad(p, lr=0.05, eps=eps)  # noqa: E731
    _, _, rec, sink = fit(copy.deepcopy(net), x, y, [StepProbe()], steps=5, optimizer=opt)
    keys = logged(sink)
    assert len(keys["smooth_lip_P"]) == 5
    sum_sq, max_lip = 0.0, None
    for t, step in enumerate(sorted(keys["smooth_lip_P"])):
        s = rec.steps[t]
        g_old = flat(s.grads)
        sum_sq = sum_sq + g_old**2
        p = sum_sq.sqrt() + eps  # the P step t divided by (it includes g_t)
        _, g_new = batch_loss_grad(net, s.next_params, s.batches)
        delta = flat(s.next_params) - flat(s.params)
        norm = math.sqrt(float((p * delta**2).sum()))
        lip = math.sqrt(float(((g_new - g_old) ** 2 / p).sum())) / norm
        assert keys["update_norm_P"][step] == pytest.approx(norm, rel=1e-10)
        assert keys["smooth_lip_P"][step] == pytest.approx(lip, rel=1e-9)
        assert keys["grad_norm_P"][step] == pytest.approx(
            math.sqrt(float((g_old**2 / p).sum())), rel=1e-10
        )
        if max_lip is not None:
            assert keys["L_past_P"][step] == pytest.approx(max_lip, rel=1e-12)
            expected = keys["lin_old"][step] + 0.5 * max_lip * norm**2
            assert keys["descent_bound_past_P"][step] == pytest.approx(expected, rel=1e-10)
        max_lip = max(max_lip or 0.0, lip)


@pytest.mark.parametrize("scheme", ["same_batch", "fresh_batch"])
def test_adam_without_momentum_steps_minus_lr_g_over_p(scheme):
    lr = 0.01
    opt = lambda p: torch.optim.Adam(p, lr=lr, betas=(0.0, 0.99))  # noqa: E731
    prefix = {"same_batch": "step", "fresh_batch": "step_fresh"}[scheme]
    x, y = data()
    _, _, _, sink = fit(mlp(), x, y, [StepProbe(scheme=scheme)], steps=5, optimizer=opt)
    keys = logged(sink, prefix)
    assert len(keys["update_norm_P"]) == (5 if scheme == "same_batch" else 4)
    for step, norm in keys["update_norm_P"].items():
        if scheme == "same_batch":  # g_t is the gradient the step used
            assert keys["lin_old"][step] == pytest.approx(-(norm**2) / lr, rel=1e-9)
            assert norm == pytest.approx(lr * keys["grad_norm_P"][step], rel=1e-9)
        assert keys["smooth_lip_P"][step] > 0


def test_lion_sign_step_has_linf_norm_lr():
    lr = 1e-3
    opt = lambda p: lion_pytorch.Lion(p, lr=lr, weight_decay=0.0)  # noqa: E731
    x, y = data()
    _, _, rec, sink = fit(mlp(), x, y, [StepProbe()], steps=3, optimizer=opt)
    keys = logged(sink)
    assert len(keys["update_norm_P"]) == 3
    for step, norm in keys["update_norm_P"].items():
        assert norm == pytest.approx(lr, rel=1e-6)
        g = flat(rec.steps[step].grads)
        assert keys["grad_norm_P"][step] == pytest.approx(float(g.abs().sum()), rel=1e-10)


def test_sgd_has_no_geometry_keys():
    x, y = data()
    _, _, _, sink = fit(mlp(), x, y, [StepProbe()], steps=3)
    assert sink.series("step/smooth_lip")
    assert not any(sink.series(f"step/{k}") for k in GEOMETRY_KEYS)


def test_reading_the_preconditioner_leaves_the_trajectory_unchanged():
    x, y = data()
    opt = lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01)  # noqa: E731
    _, plain, _, _ = fit(mlp(), x, y, [], steps=4, optimizer=opt)
    _, probed, _, sink = fit(mlp(), x, y, [StepProbe()], steps=4, optimizer=opt)
    assert sink.series("step/smooth_lip_P")
    for (name, a), b in zip(plain.net.named_parameters(), probed.net.parameters()):
        assert torch.equal(a, b), name


def test_muon_spectral_keys_match_torch_linalg_per_matrix():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(16, 8, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3, bias=False),
    ).double()
    opt = lambda p: torch.optim.Muon(p, lr=0.02)  # noqa: E731
    x, y = data()
    _, _, rec, sink = fit(copy.deepcopy(net), x, y, [StepProbe()], steps=3, optimizer=opt)
    keys = logged(sink)
    assert len(keys["update_norm_P"]) == 3
    for step, norm in keys["update_norm_P"].items():
        s = rec.steps[step]
        deltas = [s.next_params[n] - s.params[n] for n in s.params]
        _, g_new = batch_loss_grad(net, s.next_params, s.batches)
        diffs = torch.split(g_new - flat(s.grads), [d.numel() for d in deltas])
        spectral = max(float(torch.linalg.matrix_norm(d, ord=2)) for d in deltas)
        nuclear = sum(
            float(torch.linalg.matrix_norm(g.reshape(d.shape), ord="nuc"))
            for g, d in zip(diffs, deltas)
        )
        assert norm == pytest.approx(spectral, rel=1e-10)
        assert keys["smooth_lip_P"][step] == pytest.approx(nuclear / spectral, rel=1e-9)
