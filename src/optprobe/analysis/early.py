"""Does anything measured early predict performance? (report/early_prediction.csv)

The run constants of :mod:`optprobe.analysis.run_constants`, computed on the probed steps of
the first ``fraction`` of a run only (runs.csv ``const_early:<name>``), correlated within
setting × optimizer with the final training loss by
:func:`optprobe.analysis.correlations.correlations` (Spearman ρ, permutation p, Holm's
correction over every test of the table), and answered in one sentence per setting ×
optimizer (:func:`prediction_sentences`), each followed by the within-cell answer: whether
the constant still predicts among runs that share every hyperparameter but the seed
(:mod:`optprobe.analysis.within_cells`), i.e. beyond what the learning rate and weight decay
explain.

"The first ``fraction`` of a run" is the rows with step ≤ ``fraction`` × the last logged step
(the planned length for a completed run; excluded runs enter no correlation). The constants
measured against x* (γ, ρ, PL: :data:`~optprobe.analysis.run_constants.X_STAR_CONSTANTS`)
are left out: x* is the run's own end point, not known early, so they would predict the end
from the end.
"""

from __future__ import annotations

import pandas as pd

from optprobe.analysis.correlations import (
    ALPHA,
    CONSTANTS,
    MIN_PAIRS,
    N_RESAMPLES,
    cell_keys,
    correlations,
    smallest_possible_p,
)
from optprobe.analysis.report_text import pretty_optimizer
from optprobe.analysis.run_constants import X_STAR_CONSTANTS, run_constants
from optprobe.analysis.within_cells import smallest_within_pvalue

__all__ = [
    "EARLY_FRACTION",
    "EARLY_PREFIX",
    "TARGET",
    "early_constants",
    "early_prediction",
    "early_rows",
    "prediction_sentences",
]

EARLY_FRACTION = 0.10
"""Default share of the run whose probed steps the early constants use (first 10%)."""

EARLY_PREFIX = "const_early:"
TARGET = "final_train_loss"
"""The one pre-declared performance measure the early constants are tested against."""


X_STAR_NOTE = (
    " (γ, ρ and PL are not tested: they are measured against x*, the run's own end point, "
    "which is not known early.)"
)


def early_rows(history: pd.DataFrame, fraction: float = EARLY_FRACTION) -> pd.DataFrame:
    """The rows of a run's metrics table (``step`` column) with step ≤ ``fraction`` × its last
    logged step, in step order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the early fraction must lie in (0, 1], got {fraction}")
    if "step" not in history.columns or history.empty:
        return history.iloc[0:0]
    steps = pd.to_numeric(history["step"], errors="coerce")
    early = history[steps <= fraction * steps.max()]
    return early.sort_values("step", kind="mergesort").reset_index(drop=True)


def early_constants(
    history: pd.DataFrame, quantile: float, fraction: float = EARLY_FRACTION
) -> dict[str, float]:
    """The run constants (``run_constants``) of the first ``fraction`` of the run, without
    those measured against x* (:data:`X_STAR_CONSTANTS`: not measurable early)."""
    constants = run_constants(early_rows(history, fraction), quantile)
    return {k: v for k, v in constants.items() if k not in X_STAR_CONSTANTS}


def early_prediction(runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """early_prediction.csv: the pre-declared constants measured early (``const_early:``)
    against the final training loss, within setting × optimizer over the included runs;
    columns :data:`optprobe.analysis.correlations.COLUMNS`."""
    return correlations(runs, seed=seed, prefix=EARLY_PREFIX, performance=(TARGET,))


def _sentence(name: str, rows: pd.DataFrame, tests: int, n_runs: int) -> str:
    if rows.empty:
        return (
            f"{name}: not answered: {n_runs} included run(s) with early constants and a final "
            f"loss, fewer than the {MIN_PAIRS} a correlation needs (or the values are constant)."
        )
    n = int(rows["n"].max())
    floor = smallest_possible_p(n)
    if floor * tests > ALPHA:
        return (
            f"{name}: the sweep is too small to answer (n = {n} runs; the smallest possible "
            f"p-value {floor:.3g} times the {tests} tests of the table exceeds α = {ALPHA})."
        )
    passing, text = _outcome(rows, within=False)
    if not passing:
        return f"{name}: no early constant predicts the final training loss (n = {n}, {text})."
    verb = "predicts" if passing == 1 else "predict"
    return f"{name}: the early {text} {verb} the final training loss (n = {n})."


def _outcome(rows: pd.DataFrame, within: bool) -> tuple[int, str]:
    """How many constants pass Holm's correction (the pooled or the within-cell columns) and,
    best first, those constants with their ρ and adjusted p, or, when none passes, the
    smallest adjusted p and its constant."""
    suffix, rho_name = ("_within", "ρ_within") if within else ("", "ρ")
    ranked = rows.sort_values([f"pvalue{suffix}_adjusted", f"pvalue{suffix}"], kind="mergesort")
    sig = ranked[ranked[f"significant{suffix}"].astype(bool)]
    if sig.empty:
        best = ranked.iloc[0]
        return 0, (
            f"smallest Holm-adjusted p = {best[f'pvalue{suffix}_adjusted']:.2g}, "
            f"{best.constant} with {rho_name} = {best[f'rho{suffix}']:.2f}"
        )
    return len(sig), "; ".join(
        f"{r.constant} ({rho_name} = {r[f'rho{suffix}']:.2f}, Holm-adjusted p = "
        f"{r[f'pvalue{suffix}_adjusted']:.2g})"
        for _, r in sig.iterrows()
    )


def _within_sentence(rows: pd.DataFrame, cell_sizes: list[int], tests: int) -> str:
    """The within-cell answer for one setting × optimizer: its rows of the table, the run
    count of each of its hyperparameter cells and the number of within-cell tests of the
    table (Holm's family)."""
    done = rows[rows["pvalue_within"].notna()]
    if done.empty:
        return (
            "Within hyperparameter cells: not tested (the runs table has no lr, "
            "weight_decay or scheduler column, or no cell of runs sharing them holds two "
            "runs with both values)."
        )
    cells, n = int(done["cells"].max()), int(done["n_within"].max())
    where = f"{cells} cells of runs that differ only in seed, n = {n}"
    floor = smallest_within_pvalue(cell_sizes, N_RESAMPLES)
    if floor * tests > ALPHA:
        return (
            f"Within hyperparameter cells ({where}): too few runs per cell to answer (the "
            f"smallest possible p-value {floor:.3g} times the {tests} within-cell tests "
            f"exceeds α = {ALPHA})."
        )
    passing, text = _outcome(done, within=True)
    if not passing:
        return (
            f"Within hyperparameter cells ({where}): no early constant predicts the final "
            f"loss beyond the hyperparameters ({text})."
        )
    verb = "predicts" if passing == 1 else "predict"
    return (
        f"Within hyperparameter cells ({where}): the early {text} still {verb} the final "
        "loss beyond the hyperparameters."
    )


def prediction_sentences(
    runs: pd.DataFrame, table: pd.DataFrame, fraction: float = EARLY_FRACTION
) -> list[str]:
    """One answer per setting × optimizer of the included runs: which early constant
    predicts the final training loss after Holm's correction, that none does (with the
    smallest adjusted p), or that the sweep is too small to tell; then the same within
    hyperparameter cells (beyond the learning rate and weight decay)."""
    if runs.empty or not {"setting", "optimizer"} <= set(runs.columns):
        return []
    used = runs[runs["included"].astype(bool)] if "included" in runs else runs
    early = [f"{EARLY_PREFIX}{c}" for c in CONSTANTS if f"{EARLY_PREFIX}{c}" in used]
    tests = len(table)
    within_tests = int(table["pvalue_within"].notna().sum())
    out = []
    for (setting, optimizer), group in used.groupby(["setting", "optimizer"], sort=True):
        mine = table[(table["setting"] == setting) & (table["optimizer"] == optimizer)]
        has = group[early].notna().any(axis=1) if early else pd.Series(False, group.index)
        n_runs = int((has & group[TARGET].notna()).sum()) if TARGET in group else 0
        name = f"{pretty_optimizer(optimizer)} ({setting}, first {100 * fraction:.0f}% of training)"
        answered = group[has & group[TARGET].notna()] if TARGET in group else group.iloc[0:0]
        sizes = pd.Series(cell_keys(answered), dtype=object).value_counts().tolist()
        pooled = _sentence(name, mine, tests, n_runs)
        out.append(f"{pooled} {_within_sentence(mine, sizes, within_tests)}{X_STAR_NOTE}")
    return out
