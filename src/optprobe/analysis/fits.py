"""Out-of-sample judgement of the fitted forms ((L0,L1)-smoothness, bounded and affine
variance): interleaved blocks of probed steps, and whether a slope term beats a constant.

A first-half/second-half split measures drift (a run whose noise level halves in the second
half "fails" bounded variance although every step is covered by one constant). Here the
step-ordered probed steps are cut into ``N_BLOCKS`` consecutive blocks of equal length; the
constants are fitted at quantile q on the even blocks (0, 2, 4, ...) and the inequality is
checked on the odd ones (1, 3, ...), so both halves of the run are in both sets, while whole
blocks (not single steps) keep neighbouring, autocorrelated steps mostly on one side.

Whether the L1 (or σ1²) term earns its place: on the checking blocks, the pinball loss at
quantile q of the fitted line ``c0 + c1 x`` against that of the constant-only fit (the q
quantile of y on the fitting blocks). The line beats the constant when its out-of-sample
loss is lower; ``gain`` = 1 − loss_line / loss_constant (> 0: the slope helps).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from optprobe.analysis.stats import pinball_loss, quantile_regression_line

__all__ = [
    "N_BLOCKS",
    "SlopeComparison",
    "interleaved_split",
    "slope_comparison",
]

N_BLOCKS = 10
"""Blocks the probed steps are cut into (5 fitting, 5 checking); fewer with fewer steps."""


def interleaved_split(n: int, n_blocks: int = N_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, check)`` of n step-ordered items: ``min(n_blocks, n)`` consecutive
    blocks of (nearly) equal length, even blocks to fit, odd blocks to check."""
    if n <= 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty
    blocks = min(n_blocks, n)
    block_of = (np.arange(n) * blocks) // n  # 0..blocks-1, in step order
    fit = np.flatnonzero(block_of % 2 == 0)
    check = np.flatnonzero(block_of % 2 == 1)
    return fit, check


class SlopeComparison(NamedTuple):
    """Out-of-sample pinball losses of a fitted line and of a constant, on the checking
    blocks; ``n_check`` the number of checked pairs."""

    loss_line: float
    loss_constant: float
    n_check: int

    @property
    def gain(self) -> float:
        """1 − loss_line / loss_constant: positive when the slope term helps out of sample."""
        if not (math.isfinite(self.loss_line) and math.isfinite(self.loss_constant)):
            return math.nan
        if self.loss_constant == 0.0:
            return 0.0 if self.loss_line == 0.0 else -math.inf
        return 1.0 - self.loss_line / self.loss_constant

    @property
    def beats_constant(self) -> bool | None:
        """Whether the line's out-of-sample loss is below the constant's (None: not judged)."""
        gain = self.gain
        return None if math.isnan(gain) else bool(gain > 0.0)


def slope_comparison(x, y, q: float, n_blocks: int = N_BLOCKS) -> SlopeComparison:
    """Fit ``y <= c0 + c1 x`` and ``y <= c`` at quantile q on the fitting blocks of the
    finite (x, y) pairs (in the given, step, order); score both on the checking blocks."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    fit, check = interleaved_split(x.size, n_blocks)
    if fit.size == 0 or check.size == 0:
        return SlopeComparison(math.nan, math.nan, 0)
    a, b = quantile_regression_line(x[fit], y[fit], q)
    level = float(np.quantile(y[fit], q))
    yc, xc = y[check], x[check]
    return SlopeComparison(
        pinball_loss(yc - (a + b * xc), q), pinball_loss(yc - level, q), int(check.size)
    )
