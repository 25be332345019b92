"""Hutchinson trace estimates against exact traces of dense matrices."""

from __future__ import annotations

import math

import pytest
import torch
from dense_operators import DTYPE, dense_matvec, identity, spectrum_40_matrix

from optprobe.estimators.hutchinson import hutchinson_trace


def test_hutchinson_trace_within_three_stderr():
    spectrum_40 = spectrum_40_matrix()
    exact = float(torch.linalg.eigvalsh(spectrum_40).sum())
    trace, stderr, n = hutchinson_trace(dense_matvec(spectrum_40), 40, num_samples=300)
    assert n == 300 and 0 < stderr < math.inf
    assert abs(trace - exact) <= 3 * stderr


def test_hutchinson_single_sample_has_infinite_stderr():
    spectrum_40 = spectrum_40_matrix()
    trace, stderr, n = hutchinson_trace(dense_matvec(spectrum_40), 40, num_samples=1)
    assert n == 1 and math.isfinite(trace) and stderr == math.inf


def test_hutchinson_exact_on_diagonal():
    # z_i^2 = 1 for Rademacher probes: every sample is the exact trace of a diagonal matrix
    d = torch.linspace(-1.0, 3.0, 25, dtype=DTYPE)
    trace, stderr, _ = hutchinson_trace(lambda v: d * v, 25, num_samples=5)
    assert trace == pytest.approx(float(d.sum()), abs=1e-12) and stderr == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: hutchinson_trace(identity, 5, num_samples=0), "num_samples"),
        (lambda: hutchinson_trace(identity, -1, num_samples=3), "dim"),
    ],
)
def test_argument_validation(call, name):
    with pytest.raises(ValueError, match=name):
        call()
