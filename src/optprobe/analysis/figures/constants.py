"""Fitted constants against a performance measure, one point per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from optprobe.analysis.figures.canvas import (
    fmt_num,
    grid,
    is_empty,
    new_figure,
    no_data,
    panels,
    save,
)
from optprobe.analysis.figures.ordering import optimizer_colors, optimizer_legend


def _correlation_rows(
    correlations: pd.DataFrame | None, constant: str, performance: str
) -> pd.DataFrame:
    if is_empty(correlations) or not {"constant", "performance"} <= set(correlations.columns):
        return pd.DataFrame()
    bare = constant.removeprefix("const:")
    names = correlations["constant"].astype(str)
    perf = correlations["performance"].astype(str)
    return correlations[names.isin([bare, constant]) & (perf == performance)]


def _correlation_text(rows: pd.DataFrame) -> str:
    """``within optimizer: sgdm ρ=0.12 (p=0.5, n=6)`` from rows of the correlations table
    (one per setting × optimizer), or why there is none."""
    if rows.empty:
        return "Spearman ρ: not computed (not pre-declared or too few runs)"
    parts = []
    for _, r in rows.head(3).iterrows():
        rho = pd.to_numeric(r.get("rho", np.nan), errors="coerce")
        p = pd.to_numeric(r.get("pvalue_adjusted", np.nan), errors="coerce")
        n = r.get("n", np.nan)
        n_txt = f", n={int(n)}" if pd.notna(n) else ""
        parts.append(f"{r.get('optimizer', '?')} ρ={fmt_num(rho)} (adj. p={fmt_num(p)}{n_txt})")
    more = f" +{len(rows) - 3}" if len(rows) > 3 else ""
    return "within optimizer:\n" + "\n".join(parts) + more


def _draw_panel(
    ax: Axes, x: pd.Series, y: pd.Series, opts: pd.Series, colors: dict[str, str]
) -> None:
    """The runs' points coloured by optimizer; log x when every constant is positive."""
    ok = np.isfinite(x) & np.isfinite(y)
    for opt, color in colors.items():
        sel = ok & (opts == opt)
        if sel.any():
            ax.scatter(x[sel], y[sel], color=color, s=28, alpha=0.85, label=opt)
    xs = x[ok].to_numpy(float)
    if xs.size and (xs > 0).all():
        ax.set_xscale("log")
    dropped = int((~ok).sum())
    small = {"transform": ax.transAxes, "fontsize": 7, "color": "0.4"}
    if dropped:
        ax.text(0.98, 0.02, f"{dropped} run(s) without value", ha="right", va="bottom", **small)
    if not ok.any():
        ax.text(0.5, 0.5, "no data", ha="center", **small)
    ax.grid(alpha=0.3)


def plot_constant_vs_performance(
    runs: pd.DataFrame | None,
    correlations: pd.DataFrame | None,
    path: str | Path,
    performance: str = "final_train_loss",
) -> Path:
    """A scatter panel per fitted constant (``const:*`` column): constant (log x when all
    positive) against ``performance``, coloured by optimizer, titled with the within-optimizer
    Spearman ρ and Holm-adjusted permutation p-values from ``correlations``."""
    title = f"Fitted constants against {performance} (one point per run)"
    if is_empty(runs):
        return no_data(path, title, "no runs")
    constants = [c for c in runs.columns if str(c).startswith("const:")]
    if performance not in runs.columns:
        return no_data(path, title, f"runs table has no column {performance!r}")
    if not constants:
        return no_data(path, title, "runs table has no const:* columns")
    opts = (
        runs["optimizer"].astype(str)
        if "optimizer" in runs.columns
        else pd.Series("unknown", runs.index)
    )
    colors = optimizer_colors(list(opts))
    y = pd.to_numeric(runs[performance], errors="coerce")

    nrows, ncols = grid(len(constants))
    fig = new_figure(max(6.5, 4.3 * ncols), 3.5 * nrows + 0.6)
    axs = panels(fig, len(constants))
    for ax, const in zip(axs, constants, strict=False):
        _draw_panel(ax, pd.to_numeric(runs[const], errors="coerce"), y, opts, colors)
        name = const.split(":", 1)[1]
        stats = _correlation_text(_correlation_rows(correlations, const, performance))
        ax.set_title(f"{name}\n{stats}", fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel(performance)
    optimizer_legend(axs[0], colors, loc="best")
    fig.suptitle(title, fontsize=12)
    return save(fig, path)
