"""Random probe vectors and safe application of a ``MatVec`` (``v -> H v`` on flat vectors).

Every curvature estimator is a pure function of a ``MatVec`` (see
:mod:`optprobe.estimators.functional`) and the dimension ``dim`` of the parameter space, so each
can be checked against a dense matrix. Random vectors come from ``generator`` (a
``torch.Generator``; ``None`` uses torch's global RNG), so results are reproducible under
``torch.manual_seed``; every vector and reduction is float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optprobe.estimators.functional import MatVec
from optprobe.validate import check_choice

Device = torch.device | str | None

#: What ``dim`` is, for the argument checks of every estimator.
DIM_HINT = "the number of trainable parameters, the length of the flat vector"

#: The distributions :func:`random_vector` draws from.
VECTOR_KINDS = ("rademacher", "gaussian")


def random_vector(kind: str, dim: int, generator: torch.Generator | None, device: Device) -> Tensor:
    """A float64 random vector of length ``dim`` (``"rademacher"``: entries ±1, or
    ``"gaussian"``: standard normal entries) on ``device``.

    Sampling happens on the generator's device (a CPU generator cannot fill a CUDA tensor) and
    the result is moved to ``device``.
    """
    check_choice("start", kind, VECTOR_KINDS)
    sample_device = generator.device if generator is not None else device
    if kind == "rademacher":
        bits = torch.randint(0, 2, (dim,), generator=generator, device=sample_device)
        v = bits.to(torch.float64).mul_(2.0).sub_(1.0)
    else:
        v = torch.randn(dim, generator=generator, device=sample_device, dtype=torch.float64)
    return v.to(device) if device is not None else v


def apply_matvec(matvec: MatVec, v: Tensor, dim: int) -> Tensor:
    """``matvec(v)`` as a flat float64 vector, with a shape check against ``dim``."""
    out = matvec(v)
    if out.shape != (dim,):
        raise ValueError(
            f"matvec returned shape {tuple(out.shape)} for an input of shape ({dim},); "
            "dim must equal the number of entries of the flat parameter vector"
        )
    return out.to(torch.float64)


def require_finite(x: float, what: str) -> None:
    """Raise FloatingPointError when ``x`` (a value computed from matvecs) is NaN or inf."""
    if not math.isfinite(x):
        raise FloatingPointError(f"{what} is {x}; the matvec produced non-finite values")


def tridiagonal(alphas: Tensor, betas: Tensor) -> Tensor:
    """Dense symmetric tridiagonal matrix with diagonal ``alphas`` (k,) and off-diagonal
    ``betas`` (k - 1,), in their units (eigenvalue units for Lanczos coefficients)."""
    t = torch.diag(alphas)
    if betas.numel() > 0:
        t = t + torch.diag(betas, 1) + torch.diag(betas, -1)
    return t


UPCAST_BLOCK_BYTES = {"cpu": 4 * 2**20, "other": 256 * 2**20}
"""Float64 scratch (bytes) per column block when a float32 basis is projected out. CPU: small
enough to stay in cache (measured on ResNet-18's 11.2M parameters and 54 rows: 1.1 s per pass
at 1-4 MiB, 3.5 s at 32 MiB, 5.4 s upcasting one row at a time). Elsewhere (a GPU): large,
so the per-block kernel launches stay few."""


def _column_blocks(basis: Tensor):
    """``(start, stop, block)``: the basis's columns in blocks, each upcast to float64 and at
    most ``UPCAST_BLOCK_BYTES`` (the whole basis is never upcast at once)."""
    rows, dim = basis.shape
    budget = UPCAST_BLOCK_BYTES["cpu" if basis.device.type == "cpu" else "other"]
    width = max(1, budget // (8 * rows))
    for start in range(0, dim, width):
        stop = min(dim, start + width)
        yield start, stop, basis[:, start:stop].to(torch.float64)


def project_out(basis: Tensor | None, w: Tensor) -> Tensor:
    """``w`` minus its components along the orthonormal rows of ``basis``: ``w - Q^T (Q w)``
    in float64 arithmetic (one classical Gram-Schmidt pass; Lanczos repeats it when needed). A
    float32 basis is upcast by column blocks (``UPCAST_BLOCK_BYTES``), never as a whole, to
    save memory."""
    if basis is None or basis.shape[0] == 0:
        return w
    if basis.dtype == torch.float64:
        return w - basis.T @ (basis @ w)
    coeffs = sum(block @ w[start:stop] for start, stop, block in _column_blocks(basis))
    w = w.clone()
    for start, stop, block in _column_blocks(basis):
        w[start:stop] -= block.T @ coeffs
    return w
