"""Held fraction of each headline assumption against the run's stability ratio η·λ_max /
threshold (:mod:`optprobe.analysis.stability`), per optimizer: does "smoothness fails" mean
"the run is above the edge of stability"?

One row of panels per headline verdict key (registry order), one column per optimizer; one
point per run at x = the median stability ratio over its curvature firings (log axis, whiskers:
the quartiles over the firings) and y = the fraction of probed steps held (whiskers: the run's
own interval, :data:`.held_fractions.INTERVALS`). A dotted vertical line marks ratio 1. Runs without a ratio
(undefined threshold, no curvature keys) are left out and listed under the figure with the
reason.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from optprobe.analysis.figures.canvas import (
    error_bars,
    is_empty,
    new_figure,
    no_data,
    numbers,
    save,
)
from optprobe.analysis.figures.held_fractions import held_table, shown_keys
from optprobe.analysis.figures.ordering import assumption_label, optimizer_colors
from optprobe.analysis.stability import EXCLUDED, MEDIAN, Q25, Q75

TITLE = "Fraction held against the stability ratio η·λ_max / threshold, per optimizer"


def excluded_runs(runs: pd.DataFrame) -> dict[str, str]:
    """run_id -> why the run has no stability ratio (runs with one are not listed)."""
    if EXCLUDED not in runs.columns:
        return {}
    missing = runs[pd.to_numeric(runs.get(MEDIAN), errors="coerce").isna()]
    return {str(r): str(why) for r, why in zip(missing["run_id"], missing[EXCLUDED])}


def _points(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, verdict key) of the runs with a stability ratio: optimizer, the
    ratio's median and quartiles, the fraction held and its interval."""
    used = runs[pd.to_numeric(runs[MEDIAN], errors="coerce").notna()]
    cols = ["run_id", "optimizer", MEDIAN, Q25, Q75]
    used = used[[c for c in cols if c in used.columns]].assign(
        run_id=lambda d: d.run_id.astype(str)
    )
    return table.merge(used, on="run_id", how="inner")


def _draw(ax: Axes, rows: pd.DataFrame, color: str) -> None:
    """One point per run with both whiskers; the line at ratio 1."""
    x, y = numbers(rows[MEDIAN]), numbers(rows["fraction"])
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], color=color, s=22, zorder=3)
    error_bars(ax, x, y, rows["ci_low"], rows["ci_high"], elinewidth=0.8, capsize=2)
    lo, hi = numbers(rows.get(Q25, np.nan)), numbers(rows.get(Q75, np.nan))
    spread = ok & np.isfinite(lo) & np.isfinite(hi)
    if spread.any():
        xerr = np.vstack([x - lo, hi - x])[:, spread].clip(min=0)
        ax.errorbar(x[spread], y[spread], xerr=xerr, fmt="none", ecolor=color, elinewidth=0.8)
    ax.axvline(1.0, color="0.3", ls=":", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)


def _x_range(points: pd.DataFrame) -> tuple[float, float]:
    """One log x range for every panel: the ratios and their quartiles, and 1, with margin."""
    x = np.concatenate([numbers(points[c]) for c in (MEDIAN, Q25, Q75) if c in points.columns])
    x = x[np.isfinite(x) & (x > 0)]
    return min(x.min(initial=1.0), 0.5) / 1.5, max(x.max(initial=1.0), 2.0) * 1.5


def stability_figure(verdicts: pd.DataFrame | None, runs: pd.DataFrame | None) -> Figure | str:
    """The figure (see :func:`plot_stability`), or why there is none (a string)."""
    if is_empty(runs) or MEDIAN not in runs.columns:
        return f"no {MEDIAN} column (no curvature probe with a stability threshold)"
    table = held_table(verdicts, runs)
    points = _points(table, runs)
    if points.empty:
        return "no run has both a stability ratio and a verdict"
    keys = shown_keys(points)
    optimizers = sorted(points["optimizer"].astype(str).unique())
    colors = optimizer_colors(optimizers)
    fig = new_figure(3.3 * len(optimizers) + 0.6, 2.3 * len(keys) + 1.6)
    axs = fig.subplots(len(keys), len(optimizers), squeeze=False, sharex=True, sharey=True)
    for i, key in enumerate(keys):
        for j, opt in enumerate(optimizers):
            ax = axs[i, j]
            rows = points[(points["assumption"] == key) & (points["optimizer"] == opt)]
            _draw(ax, rows, colors[opt])
            if i == 0:
                ax.set_title(opt, fontsize=10, color=colors[opt])
            if j == 0:
                label = textwrap.fill(assumption_label(key), 34)
                ax.set_ylabel(f"{label}\nfraction held", fontsize=7)
            if i == len(keys) - 1:
                ax.set_xlabel("stability ratio η·λ_max / threshold", fontsize=8)
    axs[0, 0].set_xlim(*_x_range(points))
    left_out = excluded_runs(runs)
    if left_out:
        by_reason: dict[str, int] = {}
        for why in left_out.values():
            by_reason[why] = by_reason.get(why, 0) + 1
        note = "; ".join(f"{n} run(s) left out: {why}" for why, n in by_reason.items())
        fig.supxlabel(textwrap.fill(note, 160), fontsize=7, color="0.35")
    fig.suptitle(TITLE, fontsize=11)
    return fig


def plot_stability(
    verdicts: pd.DataFrame | None, runs: pd.DataFrame | None, path: str | Path
) -> Path:
    """Draw the figure of the module docstring to ``path`` (a "no data" figure when no run has
    a stability ratio); return the path. Whiskers in y: :data:`.held_fractions.INTERVALS`."""
    fig = stability_figure(verdicts, runs)
    if isinstance(fig, str):
        return no_data(path, TITLE, fig)
    return save(fig, path)
