"""Hutchinson's stochastic trace estimator, pure in a ``MatVec`` (``v -> H v``) and ``dim``.

Units: the trace is in the operator's eigenvalue units (nats per squared parameter unit for a
Hessian of a loss in nats).
"""

from __future__ import annotations

import math

import torch

from optprobe.estimators.functional import MatVec
from optprobe.estimators.matvec import (
    DIM_HINT,
    Device,
    apply_matvec,
    random_vector,
    require_finite,
)
from optprobe.validate import check_int


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
