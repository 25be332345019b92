"""Deflated Hutchinson / Hutch++ trace to a target relative standard error, against exact
traces of dense matrices: unbiasedness, honesty of the reported standard error across seeds,
exactness on a full basis, and fewer matvecs than plain Hutchinson on outlier spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dense_operators import DTYPE, dense_matvec, identity, symmetric_with_spectrum

from optprobe.estimators.hutchinson import hutchpp_trace
from optprobe.estimators.lanczos import extreme_eigenvalues

DIM = 300


@pytest.fixture(scope="module")
def outlier_matrix():
    """A bulk of 290 eigenvalues ~ N(0.05, 0.3^2) and 10 outliers in [2, 20] (a neural-network
    Hessian's shape): exact trace known."""
    rng = np.random.default_rng(0)
    eigs = np.concatenate([rng.normal(0.05, 0.3, DIM - 10), np.linspace(2.0, 20.0, 10)])
    return symmetric_with_spectrum(eigs, seed=3), float(eigs.sum())


def lanczos_deflated(a, seed: int, rel_se: float, max_matvecs: int = 200):
    gen = torch.Generator().manual_seed(seed)
    eig = extreme_eigenvalues(dense_matvec(a), DIM, max_iters=30, tol=1e-2, generator=gen)
    return hutchpp_trace(
        dense_matvec(a),
        DIM,
        rel_se,
        max_matvecs,
        basis=eig.basis,
        basis_trace=eig.basis_trace,
        generator=gen,
    )


@pytest.mark.parametrize("mode", ["lanczos", "sketch"])
def test_reported_standard_error_is_honest_across_seeds(outlier_matrix, mode):
    a, exact = outlier_matrix
    z, reached = [], []
    for seed in range(200):
        if mode == "lanczos":
            est = lanczos_deflated(a, seed, rel_se=0.02)
        else:
            gen = torch.Generator().manual_seed(seed)
            est = hutchpp_trace(dense_matvec(a), DIM, 0.02, 200, sketch_size=12, generator=gen)
        z.append((est.trace - exact) / est.stderr)
        reached.append(est.reached)
    z = np.abs(np.array(z))
    # for a normal error, 95 % within 2 SE; the adaptive stop and 8-sample deviations cost some
    assert np.mean(z <= 2) >= 0.88 and np.mean(z <= 3) >= 0.96
    assert math.sqrt(np.mean(z**2)) <= 1.4
    assert all(reached)


def test_stops_at_target_relative_standard_error(outlier_matrix):
    a, exact = outlier_matrix
    est = lanczos_deflated(a, 0, rel_se=0.05)
    assert est.reached and est.stderr <= 0.05 * abs(est.trace)
    assert est.num_samples >= 8 and est.num_matvecs == est.num_samples  # the basis was free
    capped = lanczos_deflated(a, 0, rel_se=1e-6, max_matvecs=5)
    assert capped.num_matvecs == 5 and not capped.reached


def test_deflation_needs_fewer_matvecs_than_plain_hutchinson(outlier_matrix):
    a, _ = outlier_matrix
    gen = torch.Generator().manual_seed(1)
    plain = hutchpp_trace(dense_matvec(a), DIM, 0.05, 1000, generator=gen)
    deflated = lanczos_deflated(a, 1, rel_se=0.05)
    assert plain.reached and deflated.reached
    print(f"plain {plain.num_matvecs} deflated {deflated.num_matvecs} (+30 Lanczos, shared)")
    assert 3 * deflated.num_matvecs <= plain.num_matvecs


def test_full_basis_gives_the_exact_trace(outlier_matrix):
    a, exact = outlier_matrix
    q = torch.linalg.qr(torch.randn(DIM, DIM, dtype=DTYPE)).Q.T
    est = hutchpp_trace(
        dense_matvec(a), DIM, 0.1, 10, basis=q, basis_trace=float(torch.trace(q @ a @ q.T))
    )
    assert est.trace == pytest.approx(exact, rel=1e-10)
    assert est.stderr == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rel_se": 0.0}, "rel_se"),
        ({"max_matvecs": 1}, "max_matvecs"),
        ({"sketch_size": 5, "max_matvecs": 10}, "max_matvecs"),
        ({"min_samples": 1}, "min_samples"),
        ({"basis": torch.eye(5, dtype=DTYPE)}, "basis_trace"),
    ],
)
def test_argument_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        hutchpp_trace(identity, 5, **kwargs)
