"""Per-step probe values over training, one line per run, with the probed steps on which a sign
check held or was violated marked on the curve. Panel titles come from the registry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from optprobe.analysis.figures.canvas import grid, new_figure, no_data, panels, save
from optprobe.analysis.figures.ordering import optimizer_colors, run_optimizers, run_order
from optprobe.assumptions import ASSUMPTIONS, Assumption

TITLE = "Per-step probe values (symlog y)"

#: Sign checks by the key a trajectory panel draws (the check's first key). A check with a
#: second key (the descent bound and the loss change it bounds) draws the first dashed and the
#: second solid, and marks held/violated steps on the second.
SIGN_CHECKS: Mapping[str, Assumption] = {
    a.keys[0]: a for a in ASSUMPTIONS.values() if a.kind == "sign"
}

#: Panels drawn by :func:`plot_trajectories` by default: every sign check, in registry order.
DEFAULT_TRAJECTORY_KEYS: tuple[str, ...] = tuple(SIGN_CHECKS)

#: Titles of panels that show no assumption.
OTHER_TITLES = {
    "step/loss_change": "loss change on the step's batch",
    "train/loss": "training loss",
}

HELD_COLOR = "#1a9850"
VIOLATED_COLOR = "#d73027"
_MAX_MARKERS = 2000  # held/violated markers per panel, shared by the runs


def panel_title(key: str) -> str:
    """What a panel shows: for a sign check its label, the keys drawn and when it held."""
    check = SIGN_CHECKS.get(key)
    if check is None:
        return OTHER_TITLES.get(key, key)
    drawn = key if len(check.keys) == 1 else f"{check.keys[1]} (solid) vs {key} (dashed)"
    return f"{check.label}: {drawn}\n(held: {check.symbols})"


def held_on_rows(check: Assumption, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(held, measured) per row: ``measured`` where every key of ``check`` has a value, and
    ``held`` where its condition held there within the rows' rounding tolerance (0 if absent)."""
    values = rows.reindex(columns=list(check.keys)).apply(pd.to_numeric, errors="coerce")
    measured = values.notna().all(axis=1).to_numpy()
    if check.tolerance_key in rows.columns:
        tol = pd.to_numeric(rows[check.tolerance_key], errors="coerce").fillna(0.0)
        values[check.tolerance_key] = tol
    held = np.asarray(check.held(values), dtype=bool) & measured
    return held, measured


@dataclass
class _Panel:
    """What one panel accumulates over its runs: the y values shown and the step counts."""

    key: str
    marker_every: float
    alpha: float
    shown: list[np.ndarray]
    held: int = 0
    checked: int = 0


def _curve(h: pd.DataFrame, key: str, steps: pd.Series) -> tuple[pd.Series, np.ndarray]:
    value = pd.to_numeric(h[key], errors="coerce")
    ok = value.notna() & steps.notna()
    return ok, value[ok].to_numpy(float)


def _draw_run(ax: Axes, panel: _Panel, h: pd.DataFrame, color: str) -> None:
    """One run's line(s) on a panel and the held/violated markers of its probed steps."""
    steps = h["step"] if "step" in h.columns else pd.Series(np.arange(len(h)), h.index)
    steps = pd.to_numeric(steps, errors="coerce")
    ok, ys = _curve(h, panel.key, steps)
    if not ok.any():
        return
    xs = steps[ok].to_numpy(float)
    check = SIGN_CHECKS.get(panel.key)
    bounded = check.keys[1] if check is not None and len(check.keys) > 1 else None
    ax.plot(xs, ys, color=color, lw=1.0, alpha=panel.alpha, ls="--" if bounded else "-")
    panel.shown.append(ys)
    marker_y = ys
    if bounded is not None and bounded in h.columns:
        ok_b, by = _curve(h, bounded, steps)
        ax.plot(steps[ok_b].to_numpy(float), by, color=color, lw=1.0, alpha=panel.alpha)
        panel.shown.append(by)
        bounded_y = pd.to_numeric(h.loc[ok, bounded], errors="coerce").to_numpy(float)
        marker_y = np.where(np.isfinite(bounded_y), bounded_y, ys)
    if check is None or not all(k in h.columns for k in check.keys):
        return
    held, measured = held_on_rows(check, h.loc[ok])
    panel.held += int(held.sum())
    panel.checked += int(measured.sum())
    idx = np.arange(len(xs))[:: max(1, math.ceil(len(xs) / panel.marker_every))]
    hi, vi = idx[held[idx]], idx[(measured & ~held)[idx]]
    ax.scatter(xs[hi], marker_y[hi], s=9, color=HELD_COLOR, zorder=3, linewidths=0)
    ax.scatter(xs[vi], marker_y[vi], s=14, color=VIOLATED_COLOR, marker="x", zorder=3, lw=0.8)


def _symlog_threshold(values: list[np.ndarray]) -> float:
    arr = np.concatenate([np.abs(v) for v in values]) if values else np.array([])
    arr = arr[np.isfinite(arr) & (arr > 0)]
    if arr.size == 0:
        return 1.0
    # linear around 0 below the 10% quantile of |value|, but show at most ~4 decades per sign;
    # a power of ten, so that the tick at ±linthresh sits at the edge of the linear band
    thresh = max(np.quantile(arr, 0.1), arr.max() * 1e-4)
    return float(10.0 ** math.floor(math.log10(thresh)))


def _finish_panel(ax: Axes, panel: _Panel) -> None:
    ax.set_yscale("symlog", linthresh=_symlog_threshold(panel.shown), linscale=1.0)
    ax.axhline(0, color="0.3", lw=0.7)
    ax.set_xlabel("step")
    check = SIGN_CHECKS.get(panel.key)
    two = check is not None and len(check.keys) > 1
    ax.set_ylabel(f"{check.keys[1]} / {panel.key}" if two else panel.key)
    title = panel_title(panel.key)
    if panel.checked:
        title += (
            f"\nheld on {panel.held}/{panel.checked} probed steps "
            f"({panel.held / panel.checked:.0%})"
        )
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _legend(ax: Axes, colors: Mapping[str, str]) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=o) for o, c in colors.items()]
    handles += [
        Line2D([], [], color=HELD_COLOR, marker="o", ls="", ms=4, label="held"),
        Line2D([], [], color=VIOLATED_COLOR, marker="x", ls="", ms=5, label="violated"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")


def plot_trajectories(
    histories: Mapping[str, pd.DataFrame] | None,
    runs: pd.DataFrame | None,
    path: str | Path,
    keys: Sequence[str] = DEFAULT_TRAJECTORY_KEYS,
) -> Path:
    """One panel per key with one line per run over steps (coloured by optimizer) and the probed
    steps where the assumption held (green dots) or was violated (red crosses) marked on the
    curve. A bound is drawn with what it bounds (see ``SIGN_CHECKS``). Keys absent from every
    history are skipped."""
    hist = {
        str(r): h
        for r, h in (histories or {}).items()
        if isinstance(h, pd.DataFrame) and not h.empty
    }
    if not hist:
        return no_data(path, TITLE, "no per-step histories")
    shown_keys = [
        key
        for key in dict.fromkeys(keys)
        if any(key in h.columns and h[key].notna().any() for h in hist.values())
    ]
    if not shown_keys:
        return no_data(path, TITLE, "none of the keys " + ", ".join(keys) + " was measured")
    order = run_order(list(hist), runs)
    opt_of = run_optimizers(runs)
    colors = optimizer_colors([opt_of.get(r, "unknown") for r in order])

    nrows, ncols = grid(len(shown_keys), max_cols=2)
    fig = new_figure(7.0 * ncols, 3.6 * nrows + 0.7)
    axs = panels(fig, len(shown_keys), max_cols=2)
    marker_every = max(30, _MAX_MARKERS / len(order))
    alpha = 0.8 if len(order) <= 6 else 0.5
    for ax, key in zip(axs, shown_keys, strict=False):
        panel = _Panel(key, marker_every, alpha, shown=[])
        for run in order:
            if key in hist[run].columns:
                _draw_run(ax, panel, hist[run], colors[opt_of.get(run, "unknown")])
        _finish_panel(ax, panel)
    _legend(axs[0], colors)
    fig.suptitle(TITLE + f" — {len(order)} run(s)", fontsize=12)
    return save(fig, path)
