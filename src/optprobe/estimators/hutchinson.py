"""Stochastic trace estimators (Hutchinson; deflated Hutchinson / Hutch++ to a target relative
standard error), pure in a ``MatVec`` (``v -> H v``) and ``dim``.

Units: the trace is in the operator's eigenvalue units (nats per squared parameter unit for a
Hessian of a loss in nats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optprobe.estimators.functional import MatVec
from optprobe.estimators.matvec import (
    DIM_HINT,
    Device,
    apply_matvec,
    project_out,
    random_vector,
    require_finite,
)
from optprobe.validate import check_int, check_number

#: Fewest residual samples before the running standard error may stop the trace estimate
#: (fewer make the sample deviation, and so the stopping rule, too noisy to trust: with 4, a
#: dense test saw 84 % of errors within 2 reported standard errors; with 8, 93 %).
MIN_SAMPLES = 8


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_samples: int,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> tuple[float, float, int]:
    """Hutchinson estimate of ``tr(H)`` from Rademacher probes ``z``: the mean of ``z^T H z``.

    Returns ``(trace, stderr, num_matvecs)``: the trace in loss units per squared parameter
    unit, its standard error (sample standard deviation / sqrt(num_samples); ``inf`` when
    ``num_samples == 1``), and the number of matvecs used (= ``num_samples``).
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_int("num_samples", num_samples, 1, example=100, hint="Rademacher probes")
    values = torch.empty(num_samples, dtype=torch.float64)
    for i in range(num_samples):
        z = random_vector("rademacher", dim, generator, device)
        values[i] = torch.dot(z, apply_matvec(matvec, z, dim)).cpu()
    trace = float(values.mean())
    require_finite(trace, "the Hutchinson trace")
    stderr = (
        float(values.std(correction=1)) / math.sqrt(num_samples) if num_samples > 1 else math.inf
    )
    return trace, stderr, num_samples


@dataclass
class TraceEstimate:
    """A trace estimate (eigenvalue units) with its standard error and cost.

    ``trace = exact + mean of n residual samples``: ``exact = tr(Q^T H Q)`` over an orthonormal
    basis ``Q`` (rows) and the samples are ``z^T P H P z`` with ``P = I - Q^T Q`` and Rademacher
    ``z``; ``stderr`` is their sample standard deviation / sqrt(n) (the deflated part has no
    variance given Q). ``num_matvecs`` counts the HVPs spent here (sketch + samples; a basis
    passed in is free). ``reached`` says ``stderr <= rel_se * |trace|``; False means the cap
    ``max_matvecs`` was hit first.
    """

    trace: float
    stderr: float
    num_matvecs: int
    num_samples: int
    reached: bool
    rank: int


def _sketch(matvec: MatVec, dim: int, size: int, generator, device) -> tuple[Tensor, float]:
    """Hutch++'s sketch: ``Q = orth(H S)`` for ``size`` Rademacher columns ``S`` and
    ``tr(Q^T H Q)``; ``2 * size`` matvecs."""
    sketch = torch.stack(
        [
            apply_matvec(matvec, random_vector("rademacher", dim, generator, device), dim)
            for _ in range(size)
        ],
        dim=1,
    )
    q = torch.linalg.qr(sketch).Q.T.contiguous()
    exact = sum(float(torch.dot(row, apply_matvec(matvec, row, dim))) for row in q)
    return q, exact


def hutchpp_trace(
    matvec: MatVec,
    dim: int,
    rel_se: float = 0.1,
    max_matvecs: int = 30,
    basis: Tensor | None = None,
    basis_trace: float | None = None,
    sketch_size: int = 0,
    min_samples: int = MIN_SAMPLES,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> TraceEstimate:
    """``tr(H)`` to a relative standard error ``rel_se`` by deflated (Hutch++-type) Hutchinson.

    The trace splits exactly into ``tr(Q^T H Q) + tr(P H P)`` for any orthonormal rows ``Q``
    (``P = I - Q^T Q``). ``Q`` is ``basis`` with its known ``basis_trace`` (e.g. the Lanczos
    vectors of :func:`optprobe.estimators.lanczos.extreme_eigenvalues` and the sum of their
    alphas: no extra matvec), or Hutch++'s sketch of ``sketch_size`` random vectors (``2 *
    sketch_size`` matvecs), or empty (plain Hutchinson). The rest is estimated by Rademacher
    samples ``(Pz)^T H (Pz)``, one matvec each, with the extreme eigenvalues that dominate the
    variance removed; sampling stops once at least ``min_samples`` give ``stderr <= rel_se *
    |trace|`` or ``max_matvecs`` matvecs (sketch included) are spent. The stopping rule uses the
    running sample deviation, so the reported ``stderr`` is itself an estimate.
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_number("rel_se", rel_se, low=0, low_open=True, example="0.1", hint="target RSE")
    check_int("min_samples", min_samples, 2, example=MIN_SAMPLES, hint="for a deviation")
    check_int("sketch_size", sketch_size, 0, example=0, hint="Hutch++ sketch vectors")
    least = 2 * sketch_size + 2
    check_int("max_matvecs", max_matvecs, least, example=30, hint="sketch and >= 2 samples")
    if (basis is None) != (basis_trace is None):
        raise ValueError("pass basis and basis_trace together (tr(Q^T H Q) of that basis)")
    used = 0
    if basis is None and sketch_size > 0:
        basis, basis_trace = _sketch(matvec, dim, sketch_size, generator, device)
        used = 2 * sketch_size
    exact = float(basis_trace) if basis_trace is not None else 0.0
    values: list[float] = []
    trace, stderr = math.nan, math.inf
    while used < max_matvecs:
        z = project_out(basis, random_vector("rademacher", dim, generator, device))
        values.append(float(torch.dot(z, apply_matvec(matvec, z, dim))))
        used += 1
        sample = torch.tensor(values, dtype=torch.float64)
        trace = exact + float(sample.mean())
        require_finite(trace, "the trace estimate")
        if len(values) >= 2:
            stderr = float(sample.std(correction=1)) / math.sqrt(len(values))
        if len(values) >= min_samples and stderr <= rel_se * abs(trace):
            break
    rank = 0 if basis is None else int(basis.shape[0])
    reached = stderr <= rel_se * abs(trace)
    return TraceEstimate(trace, stderr, used, len(values), reached, rank)
