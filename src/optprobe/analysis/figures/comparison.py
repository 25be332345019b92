"""The study's headline across optimizers: how often the smoothness analysis predicted the
progress against how often the convexity identities held (the sweep's comparison table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from optprobe.analysis.figures.canvas import (
    error_bars,
    is_empty,
    new_figure,
    no_data,
    numbers,
    save,
)
from optprobe.analysis.sweep import COMPARED
from optprobe.assumptions import ASSUMPTIONS

#: Comparison-table measures (column stem, the assumption's label), in plotting order.
COMPARISON_MEASURES: tuple[tuple[str, str], ...] = tuple(
    (column, ASSUMPTIONS[assumption].label) for column, assumption in COMPARED.items()
)

#: What the whiskers are (the comparison table's ``_low`` / ``_high`` columns).
INTERVALS = "95% Wilson intervals over the probed steps pooled across each optimizer's runs"

TITLE = (
    "How often does each analysis describe the step?\n"
    "(fraction of probed steps pooled over runs, 95% Wilson interval)"
)
_BAR_COLORS = ("#4575b4", "#fc8d59", "#fee090", "#91bfdb")


def _optimizer_names(table: pd.DataFrame) -> list[str]:
    names = []
    for _, row in table.iterrows():
        n_runs = row.get("n_runs", np.nan)
        names.append(
            f"{row['optimizer']}\n({int(n_runs)} run{'' if n_runs == 1 else 's'})"
            if pd.notna(n_runs)
            else str(row["optimizer"])
        )
    return names


def _bar_labels(ax, xs: np.ndarray, values: np.ndarray, tops: np.ndarray) -> None:
    """The percentage above each bar (above its whisker), "n/a" where there is no value."""
    for xi, v, top in zip(xs, values, tops, strict=False):
        if not np.isfinite(v):
            ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
            continue
        y = max(v, top) if np.isfinite(top) else v
        ax.text(xi, y + 0.015, f"{v:.0%}", ha="center", va="bottom", fontsize=7)


def plot_optimizer_comparison(comparison: pd.DataFrame | None, path: str | Path) -> Path:
    """Grouped bars per optimizer: the fraction of its probed steps (pooled over its runs) on
    which L-smoothness predicted the progress and on which the convexity identities held, with
    the table's Wilson intervals as whiskers."""
    if is_empty(comparison) or "optimizer" not in comparison.columns:
        return no_data(path, TITLE, "empty optimizer comparison table")
    measures = [
        (col, label)
        for col, label in COMPARISON_MEASURES
        if col in comparison.columns and np.isfinite(numbers(comparison[col])).any()
    ]
    if not measures:
        return no_data(path, TITLE, "no comparison measure present")
    table = comparison.reset_index(drop=True)
    n_opt = len(table)
    width = 0.8 / len(measures)
    fig = new_figure(max(6.0, 1.0 + n_opt * (0.55 * len(measures) + 0.6)), 4.6)
    ax = fig.add_subplot()
    x = np.arange(n_opt)
    for j, (col, label) in enumerate(measures):
        vals = numbers(table[col])
        xs = x - 0.4 + width * (j + 0.5)
        color = _BAR_COLORS[j % len(_BAR_COLORS)]
        bars = np.nan_to_num(vals, nan=0.0)
        ax.bar(xs, bars, width=width * 0.95, color=color, edgecolor="0.3", lw=0.5, label=label)
        lo_c, hi_c = f"{col}_low", f"{col}_high"
        has_ci = lo_c in table.columns and hi_c in table.columns
        if has_ci:
            error_bars(ax, xs, vals, table[lo_c], table[hi_c], capsize=3)
        _bar_labels(ax, xs, vals, numbers(table[hi_c]) if has_ci else np.full_like(vals, np.nan))
    ax.set_xticks(x, _optimizer_names(table))
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of probed steps")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)
    ncols = min(2, len(measures))
    ax.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=ncols, frameon=False
    )
    ax.set_title(TITLE, fontsize=11)
    return save(fig, path)
