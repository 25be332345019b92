"""Spectral density by stochastic Lanczos quadrature against the smoothed true spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_operators import (
    SKEWED_40,
    dense_matvec,
    gaussian_kernel_density,
    identity,
    symmetric_with_spectrum,
)
from scipy.integrate import trapezoid

from optprobe.estimators.spectral_density import spectral_density


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


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: spectral_density(identity, 5, num_probes=0), "num_probes"),
        (lambda: spectral_density(identity, 5, num_iters=0), "num_iters"),
        (lambda: spectral_density(identity, 5, grid_size=1), "grid_size"),
        (lambda: spectral_density(identity, 5, sigma=0.0), "sigma"),
    ],
)
def test_argument_validation(call, name):
    with pytest.raises(ValueError, match=name):
        call()
