"""The pre-declared fitted constants against a performance measure: one panel per setting ×
optimizer (rows) and constant (columns), one point per included run, each panel titled with
the Spearman ρ of correlations.csv computed on exactly its points and the n it uses.

Nothing is pooled across settings or optimizers (pooling makes the optimizer look like a
predictor), so a panel's points are the runs its ρ is about. No panel shows an interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from optprobe.analysis.correlations import CONSTANTS, MIN_PAIRS
from optprobe.analysis.figures.canvas import fmt_num, is_empty, new_figure, no_data, save
from optprobe.analysis.figures.ordering import optimizer_colors

#: What a panel's title states (for the report's caption).
PANEL_STATS = (
    "ρ: Spearman rank correlation over the panel's n runs; adj. p: its exact permutation "
    "p-value, Holm-adjusted over every test of correlations.csv; no interval is drawn"
)
_DECADES_FOR_LOG = 2.0  # log x only when the values span two decades (two labelled ticks)
_SAME = 1e-9  # values closer than this (relative: float rounding) are one value, one tick


def _groups(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(setting, optimizer) pairs of the runs, sorted; '' where the column is missing."""
    setting = runs["setting"] if "setting" in runs.columns else pd.Series("", runs.index)
    opt = runs["optimizer"] if "optimizer" in runs.columns else pd.Series("unknown", runs.index)
    pairs = zip(setting.fillna("").astype(str), opt.fillna("unknown").astype(str))
    return sorted(set(pairs))


def _in_group(runs: pd.DataFrame, setting: str, optimizer: str) -> pd.DataFrame:
    setting_col = runs["setting"].fillna("").astype(str) if "setting" in runs.columns else ""
    opt_col = (
        runs["optimizer"].fillna("unknown").astype(str)
        if "optimizer" in runs.columns
        else "unknown"
    )
    return runs[(setting_col == setting) & (opt_col == optimizer)]


def shown_constants(runs: pd.DataFrame) -> list[str]:
    """The pre-declared constants (``correlations.CONSTANTS``, in that order) with a finite
    value in at least one run."""
    return [
        c
        for c in CONSTANTS
        if f"const:{c}" in runs.columns
        and np.isfinite(pd.to_numeric(runs[f"const:{c}"], errors="coerce")).any()
    ]


def _stats_row(correlations, setting: str, optimizer: str, constant: str, performance: str):
    """The correlations.csv row of one panel, or None."""
    need = {"setting", "optimizer", "constant", "performance"}
    if is_empty(correlations) or not need <= set(correlations.columns):
        return None
    c = correlations
    sel = (
        (c["setting"].astype(str) == setting)
        & (c["optimizer"].astype(str) == optimizer)
        & (c["constant"].astype(str) == constant)
        & (c["performance"].astype(str) == performance)
    )
    return c[sel].iloc[0] if sel.any() else None


def panel_title(constant: str, n: int, row) -> str:
    """``L0: ρ = 0.50, n = 3`` / ``adj. p = 1.00``, or the n and why there is no ρ."""
    if row is not None:
        rho = pd.to_numeric(row.get("rho"), errors="coerce")
        p = pd.to_numeric(row.get("pvalue_adjusted"), errors="coerce")
        return f"{constant}: ρ = {fmt_num(rho)}, n = {n}\nadj. p = {fmt_num(p)}"
    if n < MIN_PAIRS:
        return f"{constant}: n = {n}\n(ρ needs {MIN_PAIRS} runs)"
    return f"{constant}: n = {n}\n(no ρ in correlations.csv)"


def _x_scale(ax: Axes, xs: np.ndarray) -> None:
    """Log x when every value is positive and they span two decades or more, else linear;
    few major ticks and no minor labels either way, so that tick labels never overprint (one
    tick where every value is the same)."""
    if xs.size and (xs > 0).all() and np.log10(xs.max() / xs.min()) >= _DECADES_FOR_LOG:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=4))
        ax.xaxis.set_minor_formatter(NullFormatter())
        return
    scale = float(np.abs(xs).max()) if xs.size else 0.0
    if xs.size and xs.max() - xs.min() <= _SAME * scale:  # one value (up to rounding)
        middle = float(np.median(xs))
        half = 0.05 * abs(middle) or 1.0
        ax.set_xlim(middle - half, middle + half)
        ax.set_xticks([middle], [f"{middle:.4g}"])
        return
    ax.xaxis.set_major_locator(MaxNLocator(nbins=3, min_n_ticks=2))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_powerlimits((-3, 4))
    ax.xaxis.set_major_formatter(formatter)


def _draw_panel(ax: Axes, group: pd.DataFrame, constant: str, performance: str, color: str):
    """The group's runs as points; returns the number with both values (the panel's n)."""
    x = pd.to_numeric(group[f"const:{constant}"], errors="coerce").to_numpy(float)
    y = pd.to_numeric(group[performance], errors="coerce").to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], color=color, s=26, alpha=0.85)
    _x_scale(ax, x[ok])
    small = {"transform": ax.transAxes, "fontsize": 7, "color": "0.4"}
    if (~ok).any():
        ax.text(0.98, 0.02, f"{int((~ok).sum())} run(s) without value", ha="right", **small)
    if not ok.any():
        ax.text(0.5, 0.5, "no value", ha="center", va="center", **small)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return int(ok.sum())


def constants_figure(
    runs: pd.DataFrame | None,
    correlations: pd.DataFrame | None,
    performance: str = "final_train_loss",
) -> Figure | str:
    """The figure (see the module), or why there is none (a string)."""
    if is_empty(runs):
        return "no runs"
    if performance not in runs.columns:
        return f"runs table has no column {performance!r}"
    constants = shown_constants(runs)
    if not constants:
        return f"no pre-declared constant ({', '.join(CONSTANTS)}) in the runs table"
    groups = _groups(runs)
    colors = optimizer_colors([o for _, o in groups])
    nrows, ncols = len(groups), len(constants)
    fig = new_figure(1.3 + 2.3 * ncols, 1.0 + 2.1 * nrows)
    axs = fig.subplots(nrows, ncols, squeeze=False, sharey="row")
    stats = {
        (g, c): _stats_row(correlations, *g, c, performance) for g in groups for c in constants
    }
    computed = any(row is not None for row in stats.values())
    most = 0  # the largest n of a panel
    for i, (setting, optimizer) in enumerate(groups):
        group = _in_group(runs, setting, optimizer)
        for j, constant in enumerate(constants):
            ax = axs[i, j]
            n = _draw_panel(ax, group, constant, performance, colors[optimizer])
            most = max(most, n)
            row = stats[(setting, optimizer), constant]
            title = panel_title(constant, n, row) if computed else f"{constant}: n = {n}"
            ax.set_title(title, fontsize=8)
            if i == nrows - 1:
                ax.set_xlabel(constant, fontsize=8)
        head = f"{setting}\n{optimizer}" if setting else optimizer
        axs[i, 0].set_ylabel(f"{head}\n{performance}", fontsize=8)
    title = f"Pre-declared fitted constants against {performance}, one point per run"
    if not computed and most < MIN_PAIRS:
        title += f"\n(no ρ: no setting × optimizer has {MIN_PAIRS} runs with both values)"
    elif not computed:
        title += "\n(no ρ in correlations.csv for these runs: tied values, or not computed)"
    fig.suptitle(title, fontsize=11)
    return fig


def plot_constant_vs_performance(
    runs: pd.DataFrame | None,
    correlations: pd.DataFrame | None,
    path: str | Path,
    performance: str = "final_train_loss",
) -> Path:
    """Write :func:`constants_figure` to ``path`` (a "no data" figure saying why when there is
    nothing to draw); return the path."""
    fig = constants_figure(runs, correlations, performance)
    if isinstance(fig, str):
        return no_data(path, f"Fitted constants against {performance}", fig)
    return save(fig, path)
