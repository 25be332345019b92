"""Whether the sign of λ_min is settled: Lanczos converges to the tolerance with a small
positive λ_min on Hessians whose true λ_min is negative; the flag must say the sign is not
known there, and must never call a sign known that the dense spectrum contradicts."""

from __future__ import annotations

import pytest
import torch

from optprobe.estimators.lanczos import (
    EigenEstimate,
    extreme_eigenvalues,
    lambda_min_error,
    lambda_min_sign_known,
)

DIM = 200


def operator(seed: int, smallest: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense symmetric matrix: ``smallest``, 30 eigenvalues in (0, 2e-3), the rest in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.cat(
        [
            torch.tensor([smallest]),
            torch.rand(30, generator=g) * 2e-3,
            torch.rand(DIM - 31, generator=g),
        ]
    ).double()
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    return q @ torch.diag(spectrum) @ q.T, spectrum


@pytest.mark.parametrize("smallest", [-2e-4, -0.05, 0.05])
def test_a_known_sign_is_the_true_sign(smallest):
    fooled = 0
    for seed in range(20):
        h, spectrum = operator(seed, smallest)
        est = extreme_eigenvalues(
            h.__matmul__, DIM, 80, 1e-3, generator=torch.Generator().manual_seed(seed)
        )
        true_min = float(spectrum.min())
        if lambda_min_sign_known(est):
            assert (est.lambda_min < 0) == (true_min < 0), (seed, est.lambda_min, true_min)
        fooled += est.converged and est.lambda_min > 0 > true_min
        if est.converged and est.lambda_min > 0 > true_min:
            assert not lambda_min_sign_known(est)
            assert lambda_min_error(est) >= est.lambda_min
    if smallest == -2e-4:  # the case the flag exists for: converged, positive, wrong sign
        assert fooled >= 10
    if smallest == -0.05:  # far from zero: the sign is found and known
        assert fooled == 0


def estimate(lambda_min: float, rel_residual_min: float) -> EigenEstimate:
    return EigenEstimate(
        lambda_max=2.0,
        lambda_min=lambda_min,
        num_matvecs=10,
        converged=True,
        rel_residual_max=0.0,
        rel_residual_min=rel_residual_min,
        rel_error_max=0.0,
        rel_error_min=rel_residual_min,
    )


def test_closed_form_of_the_flag():
    # the bound is relative to the spectrum's scale max(|λ_max|, |λ_min|) = 2
    assert lambda_min_error(estimate(0.01, 1e-3)) == pytest.approx(2e-3)
    assert lambda_min_sign_known(estimate(0.01, 1e-3))  # 0.01 > 0.002
    assert not lambda_min_sign_known(estimate(0.001, 1e-3))  # within the bound of zero
    assert not lambda_min_sign_known(estimate(0.0, 0.0))
    assert lambda_min_sign_known(estimate(-1e-9, 1e-3))  # a negative Ritz value proves it
