"""Dense ground truth for the curvature estimators: symmetric matrices with a known spectrum,
their matvecs, and matvecs materialized back into dense matrices."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import trapezoid
from torch import Tensor

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


def identity(v: Tensor) -> Tensor:
    return v


def spectrum_40_matrix() -> Tensor:
    """The 40x40 symmetric matrix with spectrum ``SPECTRUM_40`` (torch seeded to 0 first)."""
    torch.manual_seed(0)
    return symmetric_with_spectrum(SPECTRUM_40, seed=1)
