"""Per-run intervals for a held fraction that respect the autocorrelation of the steps.

Consecutive probed steps are not independent: the held indicator of an assumption has a lag-1
autocorrelation of 0.45-0.78 on real runs (docs/metrics.md §5), so a Wilson interval that
counts every step as a coin flip is several times too narrow. The interval here is the Wilson
interval of the *effective* sample size of a stationary AR(1) (equivalently a two-state Markov
chain, whose autocorrelation at lag k is ρ^k):

    n_eff = n (1 − ρ) / (1 + ρ),   ρ = the sample lag-1 autocorrelation, clipped to [0, 0.99]

with the observed fraction held fixed (held_eff = fraction · n_eff). ρ is clipped below at 0
(negative autocorrelation would narrow the interval below the independent case), and a
sequence that never changes has no measurable autocorrelation (ρ = 0, n_eff = n). n_eff is at
least 1. Pure numpy; the Wilson formula is :func:`optprobe.analysis.stats.wilson_interval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from optprobe.analysis.stats import wilson_interval

__all__ = [
    "DESCRIPTION",
    "METHOD",
    "RHO_MAX",
    "RunInterval",
    "effective_sample_size",
    "lag1_autocorrelation",
    "run_interval",
]

METHOD = "wilson_ess_ar1"
"""Name of the interval method, written next to every interval (``interval_method``)."""

RHO_MAX = 0.99
"""Largest lag-1 autocorrelation used (a chain that never mixes still counts one observation
per ~200 steps)."""

DESCRIPTION = (
    f"95% Wilson interval at the run's effective sample size ({METHOD}): n_eff = "
    "n(1 − ρ)/(1 + ρ) for n probed steps, ρ the lag-1 autocorrelation of the held indicator "
    f"over the run's steps, clipped to [0, {RHO_MAX}]"
)
"""What a per-run interval is, in words (captions, table notes)."""


class RunInterval(NamedTuple):
    low: float
    high: float
    n_eff: float
    method: str = METHOD


def lag1_autocorrelation(held: Sequence[bool] | np.ndarray) -> float:
    """Sample lag-1 autocorrelation of a 0/1 sequence (0 when it is constant or shorter
    than 3)."""
    x = np.asarray(held, dtype=float).ravel()
    if x.size < 3:
        return 0.0
    d = x - x.mean()
    var = float(d @ d)
    return 0.0 if var == 0.0 else float(d[1:] @ d[:-1]) / var


def effective_sample_size(held: Sequence[bool] | np.ndarray) -> float:
    """n (1 − ρ) / (1 + ρ) with ρ the lag-1 autocorrelation clipped to [0, ``RHO_MAX``];
    at least 1 for a non-empty sequence, 0 for an empty one."""
    n = int(np.asarray(held).size)
    if n == 0:
        return 0.0
    rho = min(max(lag1_autocorrelation(held), 0.0), RHO_MAX)
    return max(1.0, n * (1.0 - rho) / (1.0 + rho))


def run_interval(held: Sequence[bool] | np.ndarray, confidence: float = 0.95) -> RunInterval:
    """The interval of the fraction held over one run's steps (in step order): the Wilson
    interval at the effective sample size (NaN for an empty sequence)."""
    x = np.asarray(held, dtype=bool).ravel()
    n_eff = effective_sample_size(x)
    if x.size == 0:
        return RunInterval(float("nan"), float("nan"), 0.0)
    fraction = float(np.count_nonzero(x)) / x.size
    low, high = wilson_interval(fraction * n_eff, n_eff, confidence)
    return RunInterval(low, high, n_eff)
