"""Preconditioned curvature against dense eigenvalues of D^-1 H, and the stability thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from dense_operators import DTYPE, dense_matvec, materialize, spectrum_40_matrix

from optprobe.estimators.lanczos import extreme_eigenvalues
from optprobe.estimators.preconditioning import preconditioned_matvec
from optprobe.optim.registry import stability_threshold


def test_preconditioned_matvec_has_eigenvalues_of_dinv_h():
    spectrum_40 = spectrum_40_matrix()
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


@pytest.mark.parametrize(
    ("rule", "beta", "dampening", "expected"),
    [
        ("sgd", 0.0, 0.0, 2.0),
        ("nesterov", 0.0, 0.0, 2.0),
        ("sgd", 0.9, 0.0, 3.8 / 1.0),
        ("sgd", 0.9, 0.5, 3.8 / 0.5),
        ("sgd", 0.9, 1.0, math.inf),
        ("nesterov", 0.9, 0.0, 3.8 / 2.8),
        ("adam", 0.9, 0.0, 38.0),
        ("adam", 0.0, 0.0, 2.0),
    ],
)
def test_stability_threshold_formulas(rule, beta, dampening, expected):
    assert stability_threshold(rule, beta, dampening) == pytest.approx(expected, rel=1e-12)


def test_stability_threshold_is_lr_limit_of_heavy_ball_on_quadratic():
    # heavy ball on f = lam/2 x^2: x_{t+1} = x_t - lr lam x_t + beta (x_t - x_{t-1}) is stable
    # iff lr lam < 2 + 2 beta; just below the threshold it contracts, just above it diverges
    lam, beta = 3.0, 0.6
    threshold = stability_threshold("sgd", beta)

    def final_size(ratio: float) -> float:
        lr, x_prev, x = ratio / lam, 1.0, 1.0
        for _ in range(2000):
            x_prev, x = x, x - lr * lam * x + beta * (x - x_prev)
        return abs(x)

    assert final_size(0.99 * threshold) < 1e-3 and final_size(1.01 * threshold) > 1e3


def test_stability_threshold_rejects_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        stability_threshold("lion")
