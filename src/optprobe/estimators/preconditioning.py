"""Preconditioned curvature, in loss units per squared *preconditioned* step.

For preconditioned gradient descent ``x -= lr * D^{-1} g`` on a quadratic,
``lr * lambda_max(D^{-1} H) < 2`` is the stability condition; each optimizer's preconditioner
and threshold are in :mod:`optprobe.optim.registry`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optprobe.estimators.functional import MatVec


def preconditioned_matvec(matvec: MatVec, precond_diag: Tensor) -> MatVec:
    """``v -> D^{-1/2} H D^{-1/2} v`` for the positive diagonal ``D = diag(precond_diag)``.

    The operator is symmetric and similar to ``D^{-1} H``, so its eigenvalues are those of the
    preconditioned Hessian (for Adam, ``D = sqrt(v_hat) + eps``: the preconditioned sharpness,
    in loss units per squared preconditioned step). ``precond_diag`` is a flat vector on the
    matvec's device; it is used in float64.
    """
    if precond_diag.dim() != 1:
        raise ValueError(
            f"precond_diag must be a flat vector, got shape {tuple(precond_diag.shape)}; "
            "flatten the per-parameter preconditioner (functional.flatten)"
        )
    d = precond_diag.detach().to(torch.float64)
    bad = ~(torch.isfinite(d) & (d > 0))
    if bool(bad.any()):
        raise ValueError(
            f"precond_diag must be finite and > 0 everywhere; {int(bad.sum())} of {d.numel()} "
            f"entries are not (min {float(d.min())}); add Adam's eps or clamp before passing it"
        )
    scale = d.rsqrt()

    def precond(v: Tensor) -> Tensor:
        return scale * matvec(scale * v).to(torch.float64)

    return precond
