"""Does a fitted constant predict optimization performance? (correlations.csv)

Per docs/metrics.md §5: within one setting *and one optimizer* (pooling optimizers makes the
optimizer itself look like a predictor), over the included runs only, the Spearman rank
correlation of each pre-declared constant (``CONSTANTS``) with each pre-declared performance
measure (``PERFORMANCE``), with an exact permutation p-value (all n! pairings up to
``EXACT_MAX_N`` runs, else 20000 random ones) and Holm's correction over every test of the
table (family-wise error rate ``ALPHA``). With too few runs for any test to pass the
correction, :func:`correlation_note` says so instead of listing "significant" pairs.

Beside each pooled test, the within-cell test of :mod:`optprobe.analysis.within_cells`: the
same pair correlated only among runs that share every swept hyperparameter but the seed
(``CELL_COLUMNS``), with its own Holm correction over the table. A constant that only tracks
the learning rate passes the pooled test and fails this one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from optprobe.analysis.stats import (
    EXACT_MAX_N,
    holm,
    min_exact_spearman_pvalue,
    spearman,
    spearman_permutation_pvalue,
)
from optprobe.analysis.within_cells import UNTESTED, within_cells_test

__all__ = [
    "ALPHA",
    "CELL_COLUMNS",
    "COLUMNS",
    "CONSTANTS",
    "CORRECTION",
    "PERFORMANCE",
    "correlation_note",
    "cell_keys",
    "correlations",
    "smallest_possible_p",
]

CONSTANTS = ("L_lip_max", "L0", "L1", "gamma", "rho", "pl", "sigma_sq")
"""The pre-declared constants (runs.csv ``const:<name>``): the global L, the (L0, L1) pair,
the quasar-convexity γ, the weak-convexity ρ, the PL constant and the variance bound σ²."""

PERFORMANCE = ("final_train_loss", "steps_to_target")
"""The pre-declared measures of optimization performance."""

ALPHA = 0.05
CORRECTION = "holm"
MIN_PAIRS = 3
N_RESAMPLES = 20000  # random pairings above EXACT_MAX_N runs

CELL_COLUMNS = ("lr", "weight_decay", "scheduler")
"""The runs-table columns whose values, together, name a run's hyperparameter cell (the seed
varies within a cell)."""

COLUMNS = (
    "setting",
    "optimizer",
    "constant",
    "performance",
    "n",
    "rho",
    "pvalue",
    "pvalue_method",
    "pvalue_adjusted",
    "correction",
    "tests",
    "significant",
    "cells",
    "n_within",
    "rho_within",
    "pvalue_within",
    "pvalue_within_adjusted",
    "significant_within",
)
"""correlations.csv's columns (written even when there is no row): ``pvalue`` the two-sided
permutation p-value, ``pvalue_adjusted`` Holm's over the ``tests`` of the table,
``significant`` whether that is at most ``ALPHA``; ``cells`` the hyperparameter cells with
≥ 2 runs and ``n_within`` the runs in them, ``rho_within`` the stratified Spearman ρ,
``pvalue_within`` its within-cell permutation p, ``pvalue_within_adjusted`` Holm's over the
table's within-cell tests and ``significant_within`` whether that is at most ``ALPHA`` (NaN
and false where no cell holds two runs, or the runs table has none of the ``CELL_COLUMNS``)."""


def cell_keys(runs: pd.DataFrame) -> list[tuple]:
    """Each run's hyperparameter cell: its values of the ``CELL_COLUMNS`` it has (missing
    values as None), so runs differing only in seed share a key."""
    cols = [c for c in CELL_COLUMNS if c in runs.columns]
    return [
        tuple(None if pd.isna(v) else v for v in values)
        for values in runs[cols].itertuples(index=False, name=None)
    ]


def _values(group: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(group.get(column), errors="coerce").to_numpy(float)


def correlations(
    runs: pd.DataFrame,
    seed: int = 0,
    prefix: str = "const:",
    constants: Sequence[str] = CONSTANTS,
    performance: Sequence[str] = PERFORMANCE,
) -> pd.DataFrame:
    """correlations.csv from the runs table (only rows with ``included`` true are used): each
    column ``<prefix><constant>`` against each ``performance`` column, Holm over the table."""
    used = runs[runs["included"].astype(bool)] if "included" in runs else runs
    rows = []
    for (setting, optimizer), group in used.groupby(["setting", "optimizer"], sort=True):
        keys = cell_keys(group) if set(CELL_COLUMNS) & set(group.columns) else None
        for const in constants:
            if f"{prefix}{const}" not in group:
                continue
            for perf in performance:
                if perf not in group:
                    continue
                x_all, y_all = _values(group, f"{prefix}{const}"), _values(group, perf)
                keep = np.isfinite(x_all) & np.isfinite(y_all)
                x, y = x_all[keep], y_all[keep]
                rho = spearman(x, y) if x.size >= MIN_PAIRS else math.nan
                if not math.isfinite(rho):
                    continue
                p, method = spearman_permutation_pvalue(x, y, n_resamples=N_RESAMPLES, seed=seed)
                within = (
                    within_cells_test(x_all, y_all, keys, n_resamples=N_RESAMPLES, seed=seed)
                    if keys is not None
                    else UNTESTED
                )
                rows.append(
                    {
                        "setting": setting,
                        "optimizer": optimizer,
                        "constant": const,
                        "performance": perf,
                        "n": int(x.size),
                        "rho": rho,
                        "pvalue": p,
                        "pvalue_method": method,
                        "cells": within.cells,
                        "n_within": within.n,
                        "rho_within": within.rho,
                        "pvalue_within": within.pvalue,
                    }
                )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if table.empty:
        return table
    table["pvalue_adjusted"] = holm(table["pvalue"].to_numpy(float))
    table["correction"] = CORRECTION
    table["tests"] = int(table["pvalue"].notna().sum())
    table["significant"] = table["pvalue_adjusted"] <= ALPHA
    table["pvalue_within_adjusted"] = holm(table["pvalue_within"].to_numpy(float))
    table["significant_within"] = table["pvalue_within_adjusted"] <= ALPHA
    return table


def smallest_possible_p(n: int) -> float:
    """The smallest permutation p-value a correlation over n runs can reach: 2 / n! when
    exact, 1 / (resamples + 1) above ``EXACT_MAX_N`` runs."""
    return min_exact_spearman_pvalue(n) if n <= EXACT_MAX_N else 1.0 / (N_RESAMPLES + 1)


def _smallest_possible_p(corr: pd.DataFrame) -> float:
    """The smallest p-value any row could have reached with its number of runs."""
    return float(np.nanmin([smallest_possible_p(int(n)) for n in corr["n"]]))


def correlation_note(corr: pd.DataFrame) -> str:
    """One plain sentence on the correlations table."""
    head = (
        f"Spearman correlations within each setting and optimizer over the pre-declared "
        f"constants ({', '.join(CONSTANTS)}) and performance measures ({', '.join(PERFORMANCE)}), "
        f"exact permutation p-values, Holm's correction over the table's tests at α = {ALPHA}"
    )
    if corr.empty:
        return (
            head + f": none computed (no setting and optimizer has {MIN_PAIRS} included runs "
            "with both values, not constant)."
        )
    m = int(corr["tests"].iloc[0])
    floor = _smallest_possible_p(corr)
    n_max = int(corr["n"].max())
    if floor > ALPHA / m:
        return (
            head + f": this sweep is too small for any correlation to pass. With at most "
            f"{n_max} runs per setting and optimizer, the smallest possible p-value is "
            f"{floor:.3g}, above the {ALPHA / m:.3g} (= {ALPHA}/{m}) the correction needs; "
            "the ρ values are descriptive only."
        )
    return head + f": {_passing(corr, '')} {_passing(corr, '_within')}"


def _passing(corr: pd.DataFrame, suffix: str) -> str:
    """Which tests of the pooled (``suffix`` "") or within-cell ("_within") family pass."""
    m = int(corr[f"pvalue{suffix}"].notna().sum()) if f"pvalue{suffix}" in corr else 0
    if suffix and m == 0:
        return "Within hyperparameter cells: not tested (no cell holds two runs)."
    where = "Within hyperparameter cells (runs that differ only in seed), " if suffix else ""
    sig = corr[corr[f"significant{suffix}"].astype(bool)]
    if sig.empty:
        return f"{where}none of the {m} tests passes the correction."
    rho = "ρ_within" if suffix else "ρ"
    listed = "; ".join(
        f"{r['constant']} with {r['performance']} ({r['setting']} {r['optimizer']}: {rho} = "
        f"{r[f'rho{suffix}']:.2f}, n = {int(r[f'n{suffix}'])}, adjusted p = "
        f"{r[f'pvalue{suffix}_adjusted']:.3g})"
        for _, r in sig.iterrows()
    )
    return f"{where}{len(sig)} of {m} tests pass the correction: {listed}."
