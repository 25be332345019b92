"""Lanczos run to convergence, with cap and warm starts, against dense Hessians of small models
(``torch.func.hessian``) and dense matrices with a known spectrum (``eigvalsh``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_operators import DTYPE, dense_matvec, symmetric_with_spectrum
from torch import nn

from optprobe.estimators import functional as F
from optprobe.estimators.lanczos import DEFAULT_MAX_ITERS, extreme_eigenvalues

TOL = 1e-3


def dense_problem(net: nn.Module, inputs, targets):
    """(HVP by double backward, dense Hessian) of the mean cross-entropy of ``net``."""
    loss_of_params = F.functional_loss(
        net, (inputs, targets), F.supervised(nn.functional.cross_entropy)
    )
    params = F.detached_copy(F.trainable_params(net))
    flat = F.flatten(params.values())
    dense = torch.func.hessian(lambda f: loss_of_params(F.unflatten_like(f, params)))(flat)
    return F.hvp_double_backward(loss_of_params, params), dense


@pytest.fixture(scope="module")
def mlp_hessian():
    """A tanh MLP at initialization (indefinite Hessian, 1,347 parameters)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 48), nn.Tanh(), nn.Linear(48, 7)).to(DTYPE)
    return dense_problem(net, torch.randn(64, 20, dtype=DTYPE), torch.randint(0, 7, (64,)))


@pytest.fixture(scope="module")
def logistic_hessian():
    """Multinomial logistic regression, 30 examples, 80 features, 4 classes: the Hessian is
    singular (softmax is shift invariant, and 30 examples span at most 30 feature directions),
    so lambda_min = 0 exactly; 324 parameters, more than the default cap."""
    torch.manual_seed(1)
    net = nn.Linear(80, 4).to(DTYPE)
    return dense_problem(net, torch.randn(30, 80, dtype=DTYPE), torch.randint(0, 4, (30,)))


def assert_within_tol(est, exact: torch.Tensor) -> None:
    lam_min, lam_max = float(exact[0]), float(exact[-1])
    scale = max(abs(lam_min), abs(lam_max))
    assert abs(est.lambda_max - lam_max) <= TOL * abs(lam_max)
    assert abs(est.lambda_min - lam_min) <= TOL * scale


def test_default_run_converges_to_tol_on_mlp_hessian(mlp_hessian):
    hvp, dense = mlp_hessian
    dim = dense.shape[0]
    assert dim > DEFAULT_MAX_ITERS  # convergence must come from the bound, not exhaustion
    exact = torch.linalg.eigvalsh(dense)
    assert exact[0] < 0 < exact[-1]
    for seed in range(3):
        est = extreme_eigenvalues(hvp, dim, generator=torch.Generator().manual_seed(seed))
        assert est.converged and est.num_matvecs < DEFAULT_MAX_ITERS
        assert est.rel_residual_max <= TOL and est.rel_residual_min <= TOL
        assert_within_tol(est, exact)
        assert est.matvecs_to_max is not None and est.matvecs_to_max <= est.num_matvecs


def test_singular_hessian_converges_with_zero_lambda_min(logistic_hessian):
    hvp, dense = logistic_hessian
    dim = dense.shape[0]
    exact = torch.linalg.eigvalsh(dense)
    assert abs(float(exact[0])) < 1e-12 * float(exact[-1])  # singular: lambda_min = 0
    est = extreme_eigenvalues(hvp, dim, generator=torch.Generator().manual_seed(0))
    # relative to |lambda_min| = 0 this could never converge; relative to the scale it does
    assert est.converged and est.num_matvecs < min(dim, DEFAULT_MAX_ITERS)
    assert_within_tol(est, exact)


def test_cap_hit_is_flagged(mlp_hessian):
    hvp, dense = mlp_hessian
    est = extreme_eigenvalues(hvp, dense.shape[0], max_iters=4)
    assert est.num_matvecs == 4 and not est.converged
    assert max(est.rel_residual_max, est.rel_residual_min) > TOL


def test_ritz_vectors_are_unit_eigenvector_estimates(mlp_hessian):
    hvp, dense = mlp_hessian
    est = extreme_eigenvalues(hvp, dense.shape[0], generator=torch.Generator().manual_seed(0))
    vecs = est.ritz_vectors.to(DTYPE)
    assert vecs.shape == (2, dense.shape[0])
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(2, dtype=DTYPE), atol=1e-5, rtol=0)
    for vec, theta in zip(vecs, (est.lambda_max, est.lambda_min)):
        scale = max(abs(est.lambda_max), abs(est.lambda_min))
        # the residual of a converged Ritz pair is within the stopping bound (float32 storage)
        assert float((dense @ vec - theta * vec).norm()) <= 2 * TOL * scale
    # the basis is orthonormal and tr(Q^T H Q) is the sum of the alphas
    q = est.basis
    torch.testing.assert_close(q @ q.T, torch.eye(q.shape[0], dtype=DTYPE), atol=1e-10, rtol=0)
    assert est.basis_trace == pytest.approx(float(torch.trace(q @ dense @ q.T)), rel=1e-10)


def drifting_matrices(steps: int, dim: int = 200, drift: float = 2e-3):
    """A slowly changing symmetric matrix: gapped extremes (10 and -2) around a bulk in
    [-0.5, 0.5] and a few outliers; each step adds a random symmetric perturbation of spectral
    norm about ``drift`` times the scale."""
    eigs = np.concatenate([[-2.0], np.linspace(-0.5, 0.5, dim - 5), [2.0, 3.0, 5.0, 10.0]])
    a = symmetric_with_spectrum(eigs, seed=5)
    g = torch.Generator().manual_seed(6)
    out = []
    for _ in range(steps):
        out.append(a)
        e = torch.randn(dim, dim, generator=g, dtype=DTYPE)
        a = a + drift * 10.0 * (e + e.T) / (2 * dim**0.5)
    return out


def test_warm_start_reaches_cold_accuracy_with_fewer_matvecs():
    mats = drifting_matrices(6)
    dim = mats[0].shape[0]
    gen = torch.Generator().manual_seed(0)
    cold_hvps, warm_hvps, previous = [], [], None
    for i, a in enumerate(mats):
        calls = []

        def counted(v, a=a, calls=calls):
            calls.append(1)
            return a @ v

        exact = torch.linalg.eigvalsh(a)
        cold = extreme_eigenvalues(counted, dim, generator=gen)
        assert cold.converged and len(calls) == cold.num_matvecs
        assert_within_tol(cold, exact)
        calls.clear()
        warm = extreme_eigenvalues(counted, dim, generator=gen, warm_start=previous)
        assert warm.converged and len(calls) == warm.num_matvecs
        assert_within_tol(warm, exact)  # the same accuracy as the cold start
        previous = warm.ritz_vectors
        if i > 0:  # the first "warm" run has nothing to start from
            cold_hvps.append(cold.num_matvecs)
            warm_hvps.append(warm.num_matvecs)
    print(f"cold {cold_hvps} warm {warm_hvps}")
    assert sum(warm_hvps) <= 0.5 * sum(cold_hvps)


def test_warm_start_finds_an_eigenvalue_that_overtook_the_tracked_one():
    # the previous top Ritz vector belongs to 10; now another direction has 12 (the random
    # component of the warm start keeps it in reach)
    eigs = np.concatenate([np.linspace(-0.5, 0.5, 38), [10.0, 12.0]])
    a = symmetric_with_spectrum(eigs, seed=7)
    evals, evecs = torch.linalg.eigh(a)
    previous = torch.stack([evecs[:, -2], evecs[:, 0]]).to(torch.float32)
    est = extreme_eigenvalues(
        dense_matvec(a),
        40,
        max_iters=40,
        tol=1e-8,
        warm_start=previous,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.lambda_max == pytest.approx(12.0, rel=1e-8)


def test_warm_start_shape_is_checked():
    with pytest.raises(ValueError, match="warm_start"):
        extreme_eigenvalues(lambda v: v, 5, warm_start=torch.zeros(2, 4))
