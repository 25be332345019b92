"""Lanczos, extreme eigenvalues and power iteration against dense ground truth (eigvalsh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_operators import (
    DTYPE,
    GAPPED_40,
    dense_matvec,
    identity,
    spectrum_40_matrix,
    symmetric_with_spectrum,
)

from optprobe.estimators.lanczos import (
    EigenEstimate,
    extreme_eigenvalues,
    lanczos_tridiagonal,
    power_iteration,
)


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


def test_lanczos_float32_basis_agrees_with_float64():
    a = spectrum_40_matrix()
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


def test_lanczos_reproducible_with_generator():
    spectrum_40 = spectrum_40_matrix()
    run = [
        lanczos_tridiagonal(
            dense_matvec(spectrum_40), 40, 5, generator=torch.Generator().manual_seed(7)
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(run[0][0], run[1][0], rtol=0, atol=0)


def test_extreme_eigenvalues_exact_on_40x40():
    spectrum_40 = spectrum_40_matrix()
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


def test_extreme_eigenvalues_unconverged_is_flagged():
    spectrum_40 = spectrum_40_matrix()
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
