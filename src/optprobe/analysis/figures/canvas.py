"""The canvas every figure draws on: a ``matplotlib.figure.Figure`` with an Agg canvas (never
pyplot, so no global figure state), a grid of panels, PNG output and the "no data" figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (creating its folder); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def no_data(path: str | Path, title: str, reason: str) -> Path:
    """A figure that says "no data" and why, in place of one that has nothing to show."""
    fig = new_figure(8, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=12)
    ax.text(0.5, 0.5, f"no data\n{reason}", ha="center", va="center", fontsize=12, color="0.35")
    return save(fig, path)


def is_empty(df: pd.DataFrame | None) -> bool:
    """True unless ``df`` is a DataFrame with at least one row."""
    return df is None or not isinstance(df, pd.DataFrame) or df.empty


def numbers(values) -> np.ndarray:
    """``values`` as a float array, NaN where a value is not a number."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)


def grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid holding ``n`` panels, at most ``max_cols`` per row."""
    ncols = max(1, min(max_cols, n))
    return math.ceil(n / ncols), ncols


def panels(fig: Figure, n: int, max_cols: int = 3, **kwargs) -> list[Axes]:
    """``n`` axes on a grid (see :func:`grid`); the unused cells are hidden."""
    nrows, ncols = grid(n, max_cols)
    axs = fig.subplots(nrows, ncols, squeeze=False, **kwargs).ravel().tolist()
    for ax in axs[n:]:
        ax.set_axis_off()
    return axs[:n]


def error_bars(ax: Axes, x: np.ndarray, value: np.ndarray, low, high, **kwargs) -> None:
    """Whiskers from ``low`` to ``high`` around ``value`` where all three are finite."""
    lo, hi = numbers(low), numbers(high)
    ok = np.isfinite(value) & np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        err = np.vstack([np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)])
        ax.errorbar(x[ok], value[ok], yerr=err[:, ok], fmt="none", ecolor="black", **kwargs)


def fmt_num(x: float | None, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals, ``n/a`` when missing or not finite."""
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"
