"""Per run and assumption: the fraction of probed steps on which the assumption held."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from optprobe.analysis.figures.canvas import (
    error_bars,
    grid,
    is_empty,
    new_figure,
    no_data,
    numbers,
    panels,
    save,
)
from optprobe.analysis.figures.ordering import (
    assumption_label,
    assumption_order,
    optimizer_colors,
    optimizer_legend,
    run_optimizers,
    run_order,
)

TITLE = "Fraction of probed steps on which each assumption held"
_COLUMNS = ["run_id", "assumption", "label", "fraction", "ci_low", "ci_high"]


def _from_verdicts(verdicts: pd.DataFrame) -> pd.DataFrame:
    out = verdicts.copy()
    if "fraction" not in out.columns:
        if {"held", "checked"} <= set(out.columns):
            checked = pd.to_numeric(out["checked"], errors="coerce")
            held = pd.to_numeric(out["held"], errors="coerce")
            out["fraction"] = held / checked.where(checked > 0)
        else:
            out["fraction"] = np.nan
    for c in ("ci_low", "ci_high", "label"):
        if c not in out.columns:
            out[c] = np.nan
    out["run_id"] = out["run_id"].astype(str)
    out["assumption"] = out["assumption"].astype(str)
    return out[_COLUMNS]


def _from_held_columns(runs: pd.DataFrame) -> pd.DataFrame:
    held_cols = [c for c in runs.columns if str(c).startswith("held:")]
    rows = [
        (str(row["run_id"]), str(c).split(":", 1)[1], np.nan, row[c], np.nan, np.nan)
        for _, row in runs.iterrows()
        for c in held_cols
    ]
    return pd.DataFrame(rows, columns=_COLUMNS)


def held_table(verdicts: pd.DataFrame | None, runs: pd.DataFrame | None) -> pd.DataFrame:
    """Long table (run_id, assumption, label, fraction, ci_low, ci_high) from the verdicts, or
    from the runs' ``held:*`` columns (no interval) where the verdicts are missing."""
    if not is_empty(verdicts) and {"run_id", "assumption"} <= set(verdicts.columns):
        return _from_verdicts(verdicts)
    if not is_empty(runs) and "run_id" in runs.columns:
        return _from_held_columns(runs)
    return pd.DataFrame(columns=_COLUMNS)


def _draw_panel(ax: Axes, rows: pd.DataFrame, order: list[str], bar_colors: list[str]) -> None:
    """One bar per run (in ``order``) with its interval; "n/a" where a run has no value."""
    rows = rows.drop_duplicates("run_id", keep="last").set_index("run_id").reindex(order)
    x = np.arange(len(order))
    frac = numbers(rows["fraction"])
    ax.bar(x, np.nan_to_num(frac, nan=0.0), color=bar_colors, width=0.75, alpha=0.85)
    error_bars(ax, x, frac, rows["ci_low"], rows["ci_high"], elinewidth=1, capsize=2)
    for i in np.flatnonzero(~np.isfinite(frac)):
        ax.text(x[i], 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x, order, rotation=60, ha="right", fontsize=7)
    pad = max(0.0, (4 - len(order)) / 2)  # keep bars narrow when there are few runs
    ax.set_xlim(-0.5 - pad, len(order) - 0.5 + pad)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)


def _panel_title(assumption: str, rows: pd.DataFrame) -> str:
    labels = rows["label"].dropna()
    label = assumption_label(assumption, str(labels.iloc[0]) if len(labels) else None)
    return label if label == assumption else f"{label}\n({assumption})"


def plot_held_fractions(
    verdicts: pd.DataFrame | None, runs: pd.DataFrame | None, path: str | Path
) -> Path:
    """One panel per assumption: the fraction of probed steps on which it held, one bar per run
    (labelled by run_id, coloured by optimizer) with its 95% Wilson interval over the run's
    probed steps as error bar."""
    table = held_table(verdicts, runs)
    if table.empty:
        return no_data(path, TITLE, "no verdicts and no held:* columns")
    run_ids = list(table["run_id"])
    if not is_empty(runs) and "run_id" in runs.columns:
        run_ids = [str(r) for r in runs["run_id"]] + run_ids
    order = run_order(run_ids, runs)
    opt_of = run_optimizers(runs)
    colors = optimizer_colors([opt_of.get(r, "unknown") for r in order])
    bar_colors = [colors[opt_of.get(r, "unknown")] for r in order]
    assumptions = assumption_order(table["assumption"])

    max_cols = 3 if len(order) <= 8 else 2 if len(order) <= 16 else 1
    _, ncols = grid(len(assumptions), max_cols)
    nrows = math.ceil(len(assumptions) / ncols)
    panel_w = min(max(3.2, 0.32 * len(order) + 1.2), 12.0)
    label_h = min(0.07 * max(len(r) for r in order), 2.0)
    fig = new_figure(panel_w * ncols, (2.6 + label_h) * nrows + 0.6)
    axs = panels(fig, len(assumptions), max_cols, sharey=True)
    for i, (ax, a) in enumerate(zip(axs, assumptions, strict=False)):
        rows = table[table["assumption"] == a]
        _draw_panel(ax, rows, order, bar_colors)
        ax.set_title(_panel_title(a, rows), fontsize=9)
        if i % ncols == 0:
            ax.set_ylabel("fraction held")
    optimizer_legend(axs[0], colors, loc="upper left")
    fig.suptitle(TITLE, fontsize=12)
    return save(fig, path)
