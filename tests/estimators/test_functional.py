"""Hessian-vector products through autograd (quadratic losses, a small MLP) against dense
Hessians, fed to the curvature estimators."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from dense_operators import DTYPE, materialize, symmetric_with_spectrum
from scipy.integrate import trapezoid
from torch import Tensor, nn

from optprobe.estimators import functional as F
from optprobe.estimators.hutchinson import hutchinson_trace
from optprobe.estimators.lanczos import extreme_eigenvalues
from optprobe.estimators.spectral_density import spectral_density


def quadratic_setup(a: Tensor):
    """``loss(x) = 0.5 x^T A x`` as a loss-of-params closure; its Hessian is A."""
    dim = a.shape[0]
    g = torch.Generator().manual_seed(12)
    params = {"x": torch.randn(dim, generator=g, dtype=DTYPE)}

    def loss_of_params(p):
        return 0.5 * p["x"] @ (a @ p["x"])

    return loss_of_params, params


@pytest.mark.parametrize(
    "eigs",
    [
        np.linspace(0.1, 6.0, 30),
        np.concatenate([np.linspace(-4.0, -0.5, 10), np.linspace(0.2, 3.0, 20)]),
    ],
    ids=["spd", "indefinite"],
)
def test_quadratic_loss_hessian(eigs):
    torch.manual_seed(0)
    a = symmetric_with_spectrum(eigs, seed=13)
    loss_of_params, params = quadratic_setup(a)
    hvp = F.hvp_double_backward(loss_of_params, params)
    torch.testing.assert_close(materialize(hvp, 30), a, atol=1e-12, rtol=0)
    exact = torch.linalg.eigvalsh(a)
    est = extreme_eigenvalues(hvp, 30, max_iters=30, tol=1e-12)
    assert est.lambda_max == pytest.approx(float(exact[-1]), rel=1e-8)
    assert est.lambda_min == pytest.approx(float(exact[0]), rel=1e-8)
    trace, stderr, _ = hutchinson_trace(hvp, 30, num_samples=100)
    assert 0 < stderr and abs(trace - float(exact.sum())) <= 3 * stderr


@pytest.fixture(scope="module")
def mlp_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(DTYPE)
    inputs = torch.randn(32, 8, dtype=DTYPE)
    targets = torch.randint(0, 3, (32,))
    loss_of_params = F.functional_loss(
        net, (inputs, targets), F.supervised(nn.functional.cross_entropy)
    )
    params = F.detached_copy(F.trainable_params(net))
    flat = F.flatten(params.values())
    dense = torch.func.hessian(lambda f: loss_of_params(F.unflatten_like(f, params)))(flat)
    return loss_of_params, params, dense


@pytest.mark.parametrize("make_hvp", [F.hvp_double_backward, F.hvp_forward_over_reverse])
def test_mlp_extreme_eigenvalues_match_dense_hessian(mlp_problem, make_hvp):
    loss_of_params, params, dense = mlp_problem
    dim = dense.shape[0]
    assert dim < 5000
    exact = torch.linalg.eigvalsh(dense)
    assert exact[0] < 0 < exact[-1]  # indefinite at initialization
    hvp = make_hvp(loss_of_params, params)
    est = extreme_eigenvalues(
        hvp, dim, max_iters=100, tol=1e-6, generator=torch.Generator().manual_seed(1)
    )
    print(f"{make_hvp.__name__}: dim={dim} num_matvecs={est.num_matvecs} {est}")
    assert est.converged and est.num_matvecs <= 100
    assert est.lambda_max == pytest.approx(float(exact[-1]), rel=1e-3)
    assert est.lambda_min == pytest.approx(float(exact[0]), rel=1e-3)


def test_mlp_trace_and_density(mlp_problem):
    loss_of_params, params, dense = mlp_problem
    dim = dense.shape[0]
    hvp = F.hvp_double_backward(loss_of_params, params)
    exact = float(torch.trace(dense))
    trace, stderr, n = hutchinson_trace(hvp, dim, num_samples=200)
    assert n == 200 and 0 < stderr
    assert abs(trace - exact) <= 3 * stderr
    grid, dens = spectral_density(hvp, dim, num_probes=2, num_iters=30)
    assert trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-12)
    eigs = torch.linalg.eigvalsh(dense).numpy()
    # 30 Lanczos steps resolve the extremes of this spectrum (the test above converges to 1e-6
    # in ~43), so the grid, which pads the extreme Ritz values by 3 sigma, covers the spectrum
    assert grid[0] <= eigs[0] and grid[-1] >= eigs[-1]
    mean = trapezoid(grid * dens, grid)
    assert abs(mean - exact / dim) <= 0.05 * (eigs[-1] - eigs[0])


def test_forward_mode_blocker_names_the_layer_and_puts_modes_back():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    net[2].train()  # a mixed state, which a plain net.train()/net.eval() would not restore
    reason = F.forward_mode_blocker(net)
    assert reason is not None and "BatchNorm1d '1'" in reason
    assert [m.training for m in net.modules()] == [False, False, False, True]
    attention = nn.Sequential(nn.MultiheadAttention(4, 2))
    assert "MultiheadAttention" in F.forward_mode_blocker(attention)
    no_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    assert F.forward_mode_blocker(no_stats) is None
    assert F.forward_mode_blocker(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))) is None


def test_functional_loss_evaluates_the_batch_loss_at_given_params_and_keeps_buffers():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(DTYPE).train()
    x = torch.randn(8, 3, dtype=DTYPE)
    y = torch.randint(0, 2, (8,))
    saved = {k: b.clone() for k, b in net.named_buffers()}
    params = F.detached_copy(F.trainable_params(net))
    shifted = {k: v + 0.1 for k, v in params.items()}
    moved = copy.deepcopy(net)  # the same network at the shifted parameters
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.1)

    def dict_loss(net, batch):
        return nn.functional.cross_entropy(net(batch["x"]), batch["y"])

    supervised = F.supervised(nn.functional.cross_entropy)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(copy.deepcopy(net)(x), y)
        expected_moved = nn.functional.cross_entropy(moved(x), y)
        for batch, loss in [((x, y), supervised), ({"x": x, "y": y}, dict_loss)]:
            fn = F.functional_loss(net, batch, loss)
            assert float(fn(params)) == pytest.approx(float(expected), rel=1e-12)
            assert float(fn(shifted)) == pytest.approx(float(expected_moved), rel=1e-12)
    for k, b in net.named_buffers():  # train-mode BatchNorm updated clones only
        assert torch.equal(b, saved[k]), k
