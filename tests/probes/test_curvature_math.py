"""Curvature estimators against dense ground truth (eigvalsh, exact traces, dense Hessians)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import trapezoid
from torch import Tensor, nn

from optprobe.estimators import functional as F
from optprobe.probes.curvature import (
    EigenEstimate,
    extreme_eigenvalues,
    hutchinson_trace,
    lanczos_tridiagonal,
    power_iteration,
    preconditioned_matvec,
    spectral_density,
)

DTYPE = torch.float64


def symmetric_with_spectrum(eigs, seed: int) -> Tensor:
    """``Q diag(eigs) Q^T`` with a Haar-ish random orthogonal ``Q``."""
    g = torch.Generator().manual_seed(seed)
    eigs = torch.as_tensor(eigs, dtype=DTYPE)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=DTYPE))
    return (q * eigs) @ q.T


def dense_matvec(a: Tensor):
    return lambda v: a @ v


def materialize(matvec, dim: int) -> Tensor:
    """Dense matrix of a matvec, column by column."""
    return torch.stack([matvec(e) for e in torch.eye(dim, dtype=DTYPE)], dim=1)


def gaussian_kernel_density(grid: np.ndarray, eigs: np.ndarray, sigma: float) -> np.ndarray:
    z = (grid[:, None] - eigs[None, :]) / sigma
    dens = (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))).mean(axis=1)
    return dens / trapezoid(dens, grid)


# spectra -----------------------------------------------------------------------------------

# 40 eigenvalues with negatives, largest magnitude positive
SPECTRUM_40 = np.concatenate([np.linspace(-3.0, 4.0, 39), [5.0]])
# a clear gap at the top: 9 vs. everything in [-2, 2]
GAPPED_40 = np.concatenate([np.linspace(-2.0, 2.0, 39), [9.0]])
# skewed: a bulk near zero and a few outliers (what neural-network Hessians look like)
SKEWED_40 = np.concatenate([np.linspace(-0.5, 0.5, 30), np.linspace(1.0, 10.0, 10)])


@pytest.fixture
def spectrum_40():
    torch.manual_seed(0)
    return symmetric_with_spectrum(SPECTRUM_40, seed=1)


# ------------------------------------------------------------------------------------------
# Lanczos
# ------------------------------------------------------------------------------------------


def test_lanczos_tridiagonal_is_projection_with_orthonormal_basis():
    # a gapped spectrum: the top Ritz value converges within a few steps, which is exactly when
    # plain (not reorthogonalized) Lanczos loses orthogonality
    torch.manual_seed(0)
    a = symmetric_with_spectrum(GAPPED_40, seed=4)
    alphas, betas, basis = lanczos_tridiagonal(dense_matvec(a), 40, 30)
    assert alphas.shape == (30,) and betas.shape == (29,) and basis.shape == (30, 40)
    assert alphas.dtype == betas.dtype == basis.dtype == DTYPE  # dim <= 1e6: float64 basis
    torch.testing.assert_close(basis @ basis.T, torch.eye(30, dtype=DTYPE), atol=1e-12, rtol=0)
    t = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    torch.testing.assert_close(basis @ a @ basis.T, t, atol=1e-10, rtol=0)
    assert bool((betas > 0).all())


def test_lanczos_float32_basis_agrees_with_float64(spectrum_40):
    a = spectrum_40
    kwargs = dict(matvec=dense_matvec(a), dim=40, num_iters=10)
    a64, b64, q64 = lanczos_tridiagonal(**kwargs, generator=torch.Generator().manual_seed(3))
    a32, b32, q32 = lanczos_tridiagonal(
        **kwargs, generator=torch.Generator().manual_seed(3), basis_dtype=torch.float32
    )
    assert q32.dtype == torch.float32 and a32.dtype == b32.dtype == DTYPE
    torch.testing.assert_close(a32, a64, atol=1e-5, rtol=0)
    torch.testing.assert_close(b32, b64, atol=1e-5, rtol=0)


def test_lanczos_stops_at_invariant_subspace():
    # three distinct eigenvalues: every Krylov space has dimension <= 3
    torch.manual_seed(0)
    a = symmetric_with_spectrum([1.0] * 10 + [2.0] * 5 + [-4.0] * 5, seed=2)
    alphas, betas, basis = lanczos_tridiagonal(dense_matvec(a), 20, 15)
    assert alphas.shape == (3,) and betas.shape == (2,) and basis.shape == (3, 20)
    t = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(t), torch.tensor([-4.0, 1.0, 2.0], dtype=DTYPE), atol=1e-10, rtol=0
    )


def test_lanczos_reproducible_with_generator(spectrum_40):
    run = [
        lanczos_tridiagonal(
            dense_matvec(spectrum_40), 40, 5, generator=torch.Generator().manual_seed(7)
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(run[0][0], run[1][0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# Extreme eigenvalues, power iteration
# ------------------------------------------------------------------------------------------


def test_extreme_eigenvalues_exact_on_40x40(spectrum_40):
    exact = torch.linalg.eigvalsh(spectrum_40)
    est = extreme_eigenvalues(dense_matvec(spectrum_40), 40, max_iters=40, tol=1e-10)
    assert isinstance(est, EigenEstimate)
    assert est.converged and est.num_matvecs <= 40
    assert est.lambda_max == pytest.approx(float(exact[-1]), rel=1e-6)
    assert est.lambda_min == pytest.approx(float(exact[0]), rel=1e-6)
    assert est.lambda_min < 0


def test_extreme_eigenvalues_small_dim_is_exact_and_stops_at_dim():
    torch.manual_seed(0)
    a = symmetric_with_spectrum(np.linspace(-1.0, 1.0, 12) ** 3 + 0.3, seed=5)
    exact = torch.linalg.eigvalsh(a)
    est = extreme_eigenvalues(dense_matvec(a), 12, max_iters=50, tol=1e-14)
    assert est.num_matvecs == 12 and est.converged
    assert est.rel_residual_max == 0.0 and est.rel_residual_min == 0.0
    assert est.lambda_max == pytest.approx(float(exact[-1]), rel=1e-10)
    assert est.lambda_min == pytest.approx(float(exact[0]), rel=1e-10)


def test_extreme_eigenvalues_with_gap_converges_early():
    torch.manual_seed(0)
    a = symmetric_with_spectrum(GAPPED_40, seed=4)
    lam_max = float(torch.linalg.eigvalsh(a)[-1])
    tol = 1e-3
    est = extreme_eigenvalues(dense_matvec(a), 40, max_iters=15, tol=tol)
    assert est.num_matvecs <= 15
    assert est.rel_residual_max <= tol
    assert abs(est.lambda_max - lam_max) <= tol * abs(lam_max)


def test_extreme_eigenvalues_unconverged_is_flagged(spectrum_40):
    # 3 matvecs cannot resolve an evenly spaced spectrum to 1e-8
    est = extreme_eigenvalues(dense_matvec(spectrum_40), 40, max_iters=3, tol=1e-8)
    assert est.num_matvecs == 3 and not est.converged
    exact = torch.linalg.eigvalsh(spectrum_40)
    # Ritz values are always inside the spectrum (Cauchy interlacing)
    assert float(exact[0]) <= est.lambda_min <= est.lambda_max <= float(exact[-1])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_eigenvalues_restart_after_breakdown_finds_extremes(sign):
    # Build H (eigenvalues 10 on u, -3 on one vector, 1 on the rest) so that the (known)
    # Gaussian start vector v is orthogonal to the top eigenvector u: v then lies in a
    # 2-dimensional invariant subspace that contains the whole -3 eigenspace. Plain Lanczos
    # breaks down after 2 steps with Ritz values {-3, 1} and never sees lambda_max = 10; the
    # restarted block sees {10, 1} but not -3. The answer must combine both blocks. sign=-1
    # mirrors the spectrum (the lambda_max then comes from the first block).
    dim, seed = 20, 21
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    _, _, basis = lanczos_tridiagonal(
        dense_matvec(torch.eye(dim, dtype=DTYPE)),
        dim,
        1,
        generator=torch.Generator().manual_seed(seed),
        start="gaussian",
    )
    torch.testing.assert_close(basis[0], v / v.norm())  # the start vector is the one we built on
    g = torch.Generator().manual_seed(22)
    u = torch.randn(dim, generator=g, dtype=DTYPE)
    u = u - (u @ v) / (v @ v) * v
    w, _ = torch.linalg.qr(
        torch.cat([u[:, None], torch.randn(dim, dim - 1, generator=g, dtype=DTYPE)], 1)
    )
    eigs = torch.tensor([10.0, -3.0] + [1.0] * (dim - 2), dtype=DTYPE)
    a = sign * (w * eigs) @ w.T
    assert abs(float(w[:, 0] @ v)) < 1e-12
    est = extreme_eigenvalues(
        dense_matvec(a), dim, max_iters=10, tol=1e-6, generator=torch.Generator().manual_seed(seed)
    )
    assert est.converged
    lam_max, lam_min = (10.0, -3.0) if sign > 0 else (3.0, -10.0)
    assert est.lambda_max == pytest.approx(lam_max, rel=1e-9)
    assert est.lambda_min == pytest.approx(lam_min, rel=1e-9)
    assert est.num_matvecs > 2  # it did go past the breakdown


def test_extreme_eigenvalues_of_zero_operator():
    est = extreme_eigenvalues(lambda v: torch.zeros_like(v), 30, max_iters=10)
    assert est.lambda_max == 0.0 and est.lambda_min == 0.0


def test_power_iteration_largest_magnitude_negative():
    torch.manual_seed(0)
    eigs = np.concatenate([[-7.0], np.linspace(-3.0, 5.0, 29)])
    a = symmetric_with_spectrum(eigs, seed=8)
    value, n, converged = power_iteration(dense_matvec(a), 30, max_iters=2000, tol=1e-12)
    assert converged and n < 2000
    assert value == pytest.approx(-7.0, rel=1e-6)


def test_power_iteration_matches_lanczos_on_gapped_spectrum():
    torch.manual_seed(0)
    a = symmetric_with_spectrum(GAPPED_40, seed=4)
    value, n, converged = power_iteration(dense_matvec(a), 40, tol=1e-10)
    assert converged
    assert value == pytest.approx(9.0, rel=1e-6)


# ------------------------------------------------------------------------------------------
# Trace and spectral density
# ------------------------------------------------------------------------------------------


def test_hutchinson_trace_within_three_stderr(spectrum_40):
    exact = float(torch.linalg.eigvalsh(spectrum_40).sum())
    trace, stderr, n = hutchinson_trace(dense_matvec(spectrum_40), 40, num_samples=300)
    assert n == 300 and 0 < stderr < math.inf
    assert abs(trace - exact) <= 3 * stderr


def test_hutchinson_single_sample_has_infinite_stderr(spectrum_40):
    trace, stderr, n = hutchinson_trace(dense_matvec(spectrum_40), 40, num_samples=1)
    assert n == 1 and math.isfinite(trace) and stderr == math.inf


def test_hutchinson_exact_on_diagonal():
    # z_i^2 = 1 for Rademacher probes: every sample is the exact trace of a diagonal matrix
    d = torch.linspace(-1.0, 3.0, 25, dtype=DTYPE)
    trace, stderr, _ = hutchinson_trace(lambda v: d * v, 25, num_samples=5)
    assert trace == pytest.approx(float(d.sum()), abs=1e-12) and stderr == pytest.approx(0.0)


def test_spectral_density_normalized_and_mean_is_trace_over_dim():
    torch.manual_seed(0)
    a = symmetric_with_spectrum(SKEWED_40, seed=9)
    grid, dens = spectral_density(dense_matvec(a), 40, num_probes=20, num_iters=12)
    assert isinstance(grid, np.ndarray) and grid.dtype == dens.dtype == np.float64
    assert grid.shape == dens.shape == (200,)
    assert np.all(dens >= 0) and np.all(np.diff(grid) > 0)
    assert trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-12)
    spread = SKEWED_40.max() - SKEWED_40.min()
    mean = trapezoid(grid * dens, grid)
    assert abs(mean - SKEWED_40.mean()) <= 0.05 * spread
    # the grid covers the extreme Ritz values with a margin (Ritz values lie inside the spectrum)
    assert grid[0] < SKEWED_40.min() + 0.1 * spread and grid[-1] > SKEWED_40.max() - 0.1 * spread


def test_spectral_density_matches_smoothed_true_spectrum():
    # Gauss quadrature weights (squared FIRST components) averaged over probes reproduce the
    # eigenvalue histogram; uniform or last-component weights miss by L1 ~ 0.9-1.3 here.
    torch.manual_seed(0)
    a = symmetric_with_spectrum(SKEWED_40, seed=9)
    sigma = 0.5
    grid, dens = spectral_density(dense_matvec(a), 40, num_probes=30, num_iters=10, sigma=sigma)
    exact = gaussian_kernel_density(grid, SKEWED_40, sigma)
    assert trapezoid(np.abs(dens - exact), grid) < 0.2


def test_spectral_density_of_multiple_of_identity():
    # one Ritz value, range 0: sigma falls back to its floor and the density is still normalized
    grid, dens = spectral_density(lambda v: 2.0 * v, 10, num_probes=2, num_iters=5)
    assert trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-9)
    assert grid[np.argmax(dens)] == pytest.approx(2.0, rel=1e-5)


# ------------------------------------------------------------------------------------------
# Preconditioning
# ------------------------------------------------------------------------------------------


def test_preconditioned_matvec_has_eigenvalues_of_dinv_h(spectrum_40):
    g = torch.Generator().manual_seed(11)
    d = 0.1 + 5.0 * torch.rand(40, generator=g, dtype=DTYPE)
    op = preconditioned_matvec(dense_matvec(spectrum_40), d)
    dense = materialize(op, 40)
    torch.testing.assert_close(dense, dense.T, atol=1e-12, rtol=0)
    got = torch.linalg.eigvalsh(dense).numpy()
    ref = scipy.linalg.eigvals((spectrum_40 / d[:, None]).numpy())
    assert np.max(np.abs(ref.imag)) < 1e-8
    np.testing.assert_allclose(got, np.sort(ref.real), atol=1e-8, rtol=0)
    est = extreme_eigenvalues(op, 40, max_iters=40, tol=1e-10)
    assert est.lambda_max == pytest.approx(got[-1], rel=1e-8)
    assert est.lambda_min == pytest.approx(got[0], rel=1e-8)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_preconditioned_matvec_rejects_non_positive(bad):
    d = torch.ones(5, dtype=DTYPE)
    d[2] = bad
    with pytest.raises(ValueError, match="precond_diag"):
        preconditioned_matvec(lambda v: v, d)


# ------------------------------------------------------------------------------------------
# Through autograd: quadratic losses and a small MLP
# ------------------------------------------------------------------------------------------


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
    loss_of_params = F.functional_loss(net, inputs, targets, nn.functional.cross_entropy)
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


# ------------------------------------------------------------------------------------------
# Argument validation
# ------------------------------------------------------------------------------------------


def identity(v: Tensor) -> Tensor:
    return v


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: lanczos_tridiagonal(identity, 0, 5), "dim"),
        (lambda: lanczos_tridiagonal(identity, 5, 0), "num_iters"),
        (lambda: lanczos_tridiagonal(identity, 5, 2, basis_dtype=torch.float16), "basis_dtype"),
        (lambda: lanczos_tridiagonal(identity, 5, 2, start="uniform"), "start"),
        (lambda: extreme_eigenvalues(identity, 0), "dim"),
        (lambda: extreme_eigenvalues(identity, 5, max_iters=0), "max_iters"),
        (lambda: extreme_eigenvalues(identity, 5, tol=0.0), "tol"),
        (lambda: extreme_eigenvalues(identity, 5, tol=-1e-3), "tol"),
        (lambda: extreme_eigenvalues(identity, 5, tol=float("nan")), "tol"),
        (lambda: power_iteration(identity, 5, max_iters=0), "max_iters"),
        (lambda: power_iteration(identity, 5, tol=0), "tol"),
        (lambda: hutchinson_trace(identity, 5, num_samples=0), "num_samples"),
        (lambda: hutchinson_trace(identity, -1, num_samples=3), "dim"),
        (lambda: spectral_density(identity, 5, num_probes=0), "num_probes"),
        (lambda: spectral_density(identity, 5, num_iters=0), "num_iters"),
        (lambda: spectral_density(identity, 5, grid_size=1), "grid_size"),
        (lambda: spectral_density(identity, 5, sigma=0.0), "sigma"),
        (lambda: extreme_eigenvalues(identity, 2.5), "dim"),  # type: ignore[arg-type]
    ],
)
def test_argument_validation(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_wrong_dim_is_reported():
    with pytest.raises(ValueError, match="dim"):
        extreme_eigenvalues(lambda v: v[:4], 5)


def test_non_finite_matvec_is_reported():
    with pytest.raises(FloatingPointError):
        extreme_eigenvalues(lambda v: v * float("nan"), 5)
