"""Smoothed Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

Pure in a ``MatVec`` (``v -> H v``) and ``dim``. Units: the grid is in eigenvalue units (nats
per squared parameter unit for a Hessian of a loss in nats); the density is in their inverse
and integrates to one over the grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from optprobe.estimators.functional import MatVec
from optprobe.estimators.lanczos import lanczos_tridiagonal
from optprobe.estimators.matvec import DIM_HINT, Device, tridiagonal
from optprobe.validate import check_int, check_number


def spectral_density(
    matvec: MatVec,
    dim: int,
    num_probes: int = 1,
    num_iters: int = 30,
    generator: torch.Generator | None = None,
    device: Device = None,
    grid_size: int = 200,
    sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed eigenvalue density of ``matvec`` by stochastic Lanczos quadrature (SLQ).

    For each of ``num_probes`` normalized Rademacher vectors, ``num_iters`` Lanczos steps give
    Ritz values ``theta_i`` with weights ``tau_i`` (squared first components of the eigenvectors
    of ``T``; they sum to 1). The density is the probe average of ``sum_i tau_i N(x; theta_i,
    sigma^2)``, with ``sigma`` defaulting to ``max(range / 50, 1e-6 * max|theta|)`` (``range``:
    spread of all Ritz values; absolute floor 1e-12), on ``grid_size`` points spanning
    ``[min theta - 3 sigma, max theta + 3 sigma]``, normalized so the trapezoid integral over the
    grid is 1.

    Returns ``(grid, density)`` as float64 numpy arrays of shape (grid_size,): eigenvalues (loss
    units per squared parameter unit) and density (their inverse). ``num_probes * num_iters``
    matvecs at most. The density's mean estimates ``tr(H) / dim``.
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_int("num_probes", num_probes, 1, example=1, hint="random start vectors")
    check_int("num_iters", num_iters, 1, example=30, hint="Lanczos steps per probe")
    check_int("grid_size", grid_size, 2, example=200, hint="grid points")
    if sigma is not None:
        check_number("sigma", sigma, low=0, low_open=True, hint="or None for range / 50")
    nodes: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for _ in range(num_probes):
        alphas, betas, _ = lanczos_tridiagonal(
            matvec, dim, num_iters, generator=generator, device=device, start="rademacher"
        )
        evals, evecs = torch.linalg.eigh(tridiagonal(alphas, betas))
        nodes.append(evals.numpy())
        weights.append((evecs[0, :] ** 2).numpy() / num_probes)
    theta = np.concatenate(nodes)
    tau = np.concatenate(weights)
    lo, hi = float(theta.min()), float(theta.max())
    if sigma is None:
        sigma = max((hi - lo) / 50.0, 1e-6 * max(abs(lo), abs(hi)), 1e-12)
    grid = np.linspace(lo - 3.0 * sigma, hi + 3.0 * sigma, grid_size, dtype=np.float64)
    z = (grid[:, None] - theta[None, :]) / sigma
    density = (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2.0 * math.pi))) @ tau
    area = float(np.sum(0.5 * (density[1:] + density[:-1]) * np.diff(grid)))
    return grid, density / area
