"""Per run and headline verdict: the fraction of probed steps on which the assumption held,
with the run's own interval (the other variants are in verdicts.csv and the report's per-run
verdict table)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
    run_labels,
    run_optimizers,
    run_order,
)
from optprobe.analysis.run_intervals import DESCRIPTION
from optprobe.analysis.verdict_keys import is_headline

TITLE = "Fraction of probed steps on which each assumption held, per run"

#: What the whiskers are (verdicts.csv's ``ci_low`` / ``ci_high``).
INTERVALS = f"the run's own {DESCRIPTION}"
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
    pad = max(0.0, (4 - len(order)) / 2)  # keep bars narrow when there are few runs
    ax.set_xlim(-0.5 - pad, len(order) - 0.5 + pad)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)


def _panel_title(key: str, rows: pd.DataFrame, width: int) -> str:
    labels = rows["label"].dropna()
    label = assumption_label(key, str(labels.iloc[0]) if len(labels) else None)
    text = textwrap.fill(label, width)
    return text if label == key else f"{text}\n({key})"


def shown_keys(table: pd.DataFrame) -> list[str]:
    """The verdict keys drawn: the headline variants (every key the registry does not mark as
    a non-headline variant), in registry order."""
    return [k for k in assumption_order(table["assumption"]) if is_headline(k)]


def held_fractions_figure(verdicts: pd.DataFrame | None, runs: pd.DataFrame | None) -> Figure | str:
    """The figure (see :func:`plot_held_fractions`), or why there is none (a string)."""
    table = held_table(verdicts, runs)
    if table.empty:
        return "no verdicts and no held:* columns"
    run_ids = list(table["run_id"])
    if not is_empty(runs) and "run_id" in runs.columns:
        run_ids = [str(r) for r in runs["run_id"]] + run_ids
    order = run_order(run_ids, runs)
    names = run_labels(order, runs)
    opt_of = run_optimizers(runs)
    colors = optimizer_colors([opt_of.get(r, "unknown") for r in order])
    bar_colors = [colors[opt_of.get(r, "unknown")] for r in order]
    keys = shown_keys(table)

    max_cols = 3 if len(order) <= 8 else 2 if len(order) <= 24 else 1
    _, ncols = grid(len(keys), max_cols)
    nrows = math.ceil(len(keys) / ncols)
    panel_w = min(max(3.4, 0.32 * len(order) + 1.2), 12.0)
    label_h = min(0.065 * max(len(names[r]) for r in order), 2.0)
    fig = new_figure(panel_w * ncols, (2.9 + label_h) * nrows + 1.0)
    axs = panels(fig, len(keys), max_cols, sharey=True)
    for i, (ax, key) in enumerate(zip(axs, keys, strict=False)):
        rows = table[table["assumption"] == key]
        _draw_panel(ax, rows, order, bar_colors)
        ax.set_xticks(range(len(order)), [names[r] for r in order], rotation=60, ha="right",
                      rotation_mode="anchor", fontsize=7)  # fmt: skip
        ax.set_title(_panel_title(key, rows, width=int(panel_w * 11)), fontsize=8)
        if i % ncols == 0:
            ax.set_ylabel("fraction of probed steps held")
    optimizer_legend(fig, colors, loc="outside lower center", ncols=max(1, len(colors)))
    fig.suptitle(TITLE, fontsize=12)
    return fig


def plot_held_fractions(
    verdicts: pd.DataFrame | None, runs: pd.DataFrame | None, path: str | Path
) -> Path:
    """One panel per headline verdict key: the fraction of probed steps on which it held, one
    bar per run (labelled by optimizer and seed, coloured by optimizer) with the run's own
    interval from the verdicts (``INTERVALS``). Written to ``path``; returns it."""
    fig = held_fractions_figure(verdicts, runs)
    if isinstance(fig, str):
        return no_data(path, TITLE, fig)
    return save(fig, path)
