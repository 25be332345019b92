"""The study's headline across optimizers: per setting × optimizer, the mean over runs of the
fraction of probed steps on which each deciding verdict entry held (the entries of the two
findings, from the registry), with the 95% t interval over runs (comparison.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from optprobe.analysis.comparison import INTERVAL
from optprobe.analysis.figures.canvas import (
    error_bars,
    is_empty,
    new_figure,
    no_data,
    numbers,
    save,
)
from optprobe.analysis.findings import FINDINGS, deciding
from optprobe.analysis.verdict_keys import KEY_COLUMN, finding_of

#: What the whiskers are (comparison.csv's ``ci_low`` / ``ci_high``).
INTERVALS = INTERVAL + " (each run counts once); dots: the pooled fraction of steps, no interval"

TITLE = (
    "How often does each analysis describe the step?\n"
    "(mean over runs of the fraction held, 95% t interval over runs)"
)
_BAR_COLORS = ("#4575b4", "#fc8d59", "#fee090", "#91bfdb", "#d73027", "#1a9850", "#762a83")


def comparison_measures(comparison: pd.DataFrame) -> list[tuple[str, str]]:
    """(verdict key, its label) of the deciding entries of the findings in the table, finding
    by finding, in table order within a finding."""
    if is_empty(comparison) or KEY_COLUMN not in comparison.columns:
        return []
    out: dict[str, str] = {}
    labels = comparison.get("assumption_label", comparison[KEY_COLUMN])
    for key, label in zip(comparison[KEY_COLUMN].astype(str), labels.astype(str)):
        if finding_of(key) and deciding(key):
            out.setdefault(key, label)
    rank = {f.key: i for i, f in enumerate(FINDINGS)}
    return sorted(out.items(), key=lambda kv: rank.get(finding_of(kv[0]) or "", len(rank)))


def _pairs(comparison: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(comparison["setting"], comparison["optimizer"])))


def _pair_names(comparison: pd.DataFrame, pairs: list[tuple[str, str]]) -> list[str]:
    several = len({s for s, _ in pairs}) > 1
    names = []
    for setting, optimizer in pairs:
        rows = comparison[
            (comparison["setting"] == setting) & (comparison["optimizer"] == optimizer)
        ]
        runs = int(pd.to_numeric(rows["runs"], errors="coerce").max()) if len(rows) else 0
        head = f"{setting}\n{optimizer}" if several else str(optimizer)
        names.append(f"{head}\n({runs} run{'' if runs == 1 else 's'})")
    return names


def _column(comparison, pairs, key: str, column: str) -> np.ndarray:
    table = comparison[comparison[KEY_COLUMN].astype(str) == key].set_index(
        ["setting", "optimizer"]
    )
    return np.array([numbers([table[column].get(p, np.nan)])[0] for p in pairs])


def plot_optimizer_comparison(comparison: pd.DataFrame | None, path: str | Path) -> Path:
    """Grouped bars per setting × optimizer: the mean run fraction of each deciding entry of
    the findings, whiskers its t interval over runs, a dot its pooled fraction."""
    need = {"setting", "optimizer", KEY_COLUMN, "mean_run_fraction"}
    if is_empty(comparison) or not need <= set(comparison.columns):
        return no_data(path, TITLE, "empty comparison table")
    measures = comparison_measures(comparison)
    if not measures:
        return no_data(path, TITLE, "no entry of a finding measured")
    pairs = _pairs(comparison)
    width = 0.8 / len(measures)
    fig = new_figure(max(6.0, 1.0 + len(pairs) * (0.45 * len(measures) + 0.6)), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(pairs))
    for j, (key, label) in enumerate(measures):
        vals = _column(comparison, pairs, key, "mean_run_fraction")
        xs = x - 0.4 + width * (j + 0.5)
        color = _BAR_COLORS[j % len(_BAR_COLORS)]
        ax.bar(xs, np.nan_to_num(vals), width=width * 0.95, color=color, edgecolor="0.3", lw=0.5,
               label=label)  # fmt: skip
        lows, highs = (_column(comparison, pairs, key, c) for c in ("ci_low", "ci_high"))
        error_bars(ax, xs, vals, lows, highs, capsize=3)
        if "pooled_fraction" in comparison.columns:
            pooled = _column(comparison, pairs, key, "pooled_fraction")
            ax.plot(xs, pooled, "o", color="0.15", ms=3, zorder=3)
        for xi, v in zip(xs, vals):
            if not np.isfinite(v):
                ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x, _pair_names(comparison, pairs), fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mean over runs of the fraction held")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncols=min(2, len(measures)), frameon=False)  # fmt: skip
    ax.set_title(TITLE, fontsize=11)
    return save(fig, path)
