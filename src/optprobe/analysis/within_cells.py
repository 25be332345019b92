"""Does a constant predict performance beyond the hyperparameters? Spearman within cells.

A sweep over learning rate × weight decay × seed can make any constant that tracks the
learning rate "predict" the final loss. The within-cell test asks the narrower question:
among runs that share every hyperparameter but the seed (a *cell*), does the run with the
larger constant end with the larger loss?

Statistic: the stratified Spearman correlation

    ρ_within = Σ_c ⟨r_c(x), r_c(y)⟩ / sqrt(Σ_c ‖r_c(x)‖² · Σ_c ‖r_c(y)‖²),

with r_c the ranks within cell c (ties averaged) centred at their mean; cells of one run
carry no within-cell information and are left out. Null: within each cell the pairing of x
and y is random, so y is permuted within cells only (the cell means of both sides, i.e.
everything the hyperparameters explain, are kept). The p-value is exact over all Π n_c!
within-cell pairings up to ``EXACT_MAX_PAIRINGS``, else from random within-cell pairings,
(1 + hits) / (1 + n_resamples).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from optprobe.analysis.stats import all_permutations, average_ranks

__all__ = [
    "EXACT_MAX_PAIRINGS",
    "UNTESTED",
    "WithinCells",
    "smallest_within_pvalue",
    "within_cells_test",
]

EXACT_MAX_PAIRINGS = 362880
"""Up to this many within-cell pairings (Π n_c!) the p-value enumerates them all."""

_REL_TOL = 1e-9  # a permuted statistic equal to the observed one up to round-off counts


class WithinCells(NamedTuple):
    """Result of :func:`within_cells_test`: ``rho`` the stratified Spearman correlation,
    ``pvalue`` its two-sided permutation p-value and ``method`` ("exact" or "permutation (N
    resamples)"), ``cells`` the cells with ≥ 2 runs and ``n`` the runs in them."""

    rho: float
    pvalue: float
    method: str
    cells: int
    n: int


UNTESTED = WithinCells(math.nan, math.nan, "", 0, 0)
"""The result where no within-cell test is possible."""


def _centred_ranks(values: np.ndarray) -> np.ndarray:
    return average_ranks(values) - (values.size + 1) / 2.0


def _cells(x, y, cell_keys) -> list[tuple[np.ndarray, np.ndarray]]:
    """(centred ranks of x, centred ranks of y) per cell of ≥ 2 finite pairs."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    keys = list(cell_keys)
    if not x.size == y.size == len(keys):
        raise ValueError(
            f"x, y and the cell keys differ in length: {x.size}, {y.size}, {len(keys)}"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    groups: dict[object, list[int]] = {}
    for i in np.flatnonzero(keep):
        groups.setdefault(keys[i], []).append(int(i))
    return [
        (_centred_ranks(x[idx]), _centred_ranks(y[idx]))
        for idx in (np.array(v) for v in groups.values())
        if idx.size >= 2
    ]


def _exact_sums(cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Σ_c ⟨r_c(x), π_c r_c(y)⟩ for every combination of within-cell permutations π_c."""
    sums = np.zeros(1)
    for rx, ry in cells:
        sums = np.add.outer(sums, ry[all_permutations(rx.size)] @ rx).ravel()
    return sums


def within_cells_test(
    x, y, cell_keys, n_resamples: int = 20000, seed: int | None = 0
) -> WithinCells:
    """Stratified Spearman ρ of ``x`` and ``y`` within the cells named by ``cell_keys`` (one
    hashable per pair) and its within-cell permutation p-value. Pairs with a non-finite side
    are dropped; all NaN (cells 0) when no cell keeps two runs or a side is constant within
    every cell."""
    cells = _cells(x, y, cell_keys)
    if not cells:
        return UNTESTED
    sxx = sum(float(rx @ rx) for rx, _ in cells)
    syy = sum(float(ry @ ry) for _, ry in cells)
    n = sum(rx.size for rx, _ in cells)
    if sxx == 0.0 or syy == 0.0:
        return UNTESTED._replace(cells=len(cells), n=n)
    observed = sum(float(rx @ ry) for rx, ry in cells)
    rho = observed / math.sqrt(sxx * syy)
    tol = _REL_TOL * math.sqrt(sxx * syy)
    pairings = math.prod(math.factorial(rx.size) for rx, _ in cells)
    if pairings <= EXACT_MAX_PAIRINGS:
        sums = _exact_sums(cells)
        p = float(np.mean(np.abs(sums) >= abs(observed) - tol))
        return WithinCells(rho, p, "exact", len(cells), n)
    rng = np.random.default_rng(seed)
    sums = np.zeros(n_resamples)
    for rx, ry in cells:
        sums += rng.permuted(np.tile(ry, (n_resamples, 1)), axis=1) @ rx
    hits = int(np.count_nonzero(np.abs(sums) >= abs(observed) - tol))
    p = (1.0 + hits) / (1.0 + n_resamples)
    return WithinCells(rho, p, f"permutation ({n_resamples} resamples)", len(cells), n)


def smallest_within_pvalue(cell_sizes, n_resamples: int = 20000) -> float:
    """The smallest p-value the within-cell test can reach with cells of these sizes (each
    ≥ 2): 2 / Π n_c! when exact (only the all-identity and all-reversal pairings reach
    |ρ_within| = 1 without ties), 1 / (n_resamples + 1) above ``EXACT_MAX_PAIRINGS``."""
    sizes = [int(s) for s in cell_sizes if int(s) >= 2]
    if not sizes:
        return math.nan
    pairings = math.prod(math.factorial(s) for s in sizes)
    return 2.0 / pairings if pairings <= EXACT_MAX_PAIRINGS else 1.0 / (n_resamples + 1)
