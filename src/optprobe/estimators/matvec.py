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


def project_out(basis: Tensor | None, w: Tensor, passes: int = 1) -> Tensor:
    """``w`` minus its components along the orthonormal rows of ``basis`` (float64 arithmetic;
    ``passes=2`` repeats it, as full reorthogonalization needs). A float32 basis is upcast one
    row at a time instead of as a whole block, to save memory."""
    if basis is None or basis.shape[0] == 0:
        return w
    for _ in range(passes):
        if basis.dtype == torch.float64:
            w = w - basis.T @ (basis @ w)
        else:
            for row in basis:
                q = row.to(torch.float64)
                w = w - torch.dot(q, w) * q
    return w
