"""Per-layer heatmaps: each parameter group's share of the step (rows: groups named from the
model, see :mod:`optprobe.estimators.layer_groups`) over the probed steps (columns), from the
step probe's ``layer/<group>/<key>`` keys (``probes.step.per_layer``; ``layer_fresh/`` when
only the fresh-batch scheme logged them).

Two rows of panels, one column per optimizer (its first run in run order: a representative
run, not an average over seeds):

- share of the step length: ‖Δ_{t,k}‖² / Σ_j ‖Δ_{t,j}‖² (0..1, the groups sum to 1);
- signed share of ⟨g⁺_t, Δ_t⟩: ⟨g⁺_{t,k}, Δ_{t,k}⟩ / Σ_j |⟨g⁺_{t,j}, Δ_{t,j}⟩| (−1..1; negative
  where the group's move goes downhill at the new point, the sum of |share| is 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from optprobe.analysis.figures.canvas import new_figure, no_data, save
from optprobe.analysis.figures.ordering import run_labels, run_optimizers, run_order
from optprobe.estimators.layer_groups import group_sort_key

TITLE = "Per-layer view of the step"
PREFIXES = ("layer", "layer_fresh")  # same-batch keys first
MAX_PANELS = 6  # optimizers shown side by side
ROWS = (
    ("update_norm", "share of ‖Δ‖²", "Greys", (0.0, 1.0)),
    ("lin_new", "signed share of ⟨g⁺,Δ⟩", "RdBu_r", (-1.0, 1.0)),
)
CAPTION = (
    "Per parameter group named from the model (rows) and probed step (columns), for one "
    "run per optimizer (its first seed): top, the group's share of the squared step length "
    "‖Δ_k‖²/‖Δ‖²; bottom, its signed share of ⟨g⁺,Δ⟩, ⟨g⁺_k,Δ_k⟩/Σ_j|⟨g⁺_j,Δ_j⟩| (blue: the "
    "group's move goes downhill at the new point). From the step probe's layer/<group>/* keys "
    "(probes.step.per_layer; layer_fresh/* when only the fresh-batch scheme logged them). "
    "No intervals."
)


def layer_prefix(history: pd.DataFrame) -> str | None:
    """The first of ``PREFIXES`` under which ``history`` has per-layer values, or None."""
    for prefix in PREFIXES:
        if any(str(c).startswith(f"{prefix}/") for c in history.columns):
            return prefix
    return None


def layer_shares(
    history: pd.DataFrame, prefix: str, key: str
) -> tuple[np.ndarray, list, np.ndarray]:
    """(probed steps, groups in display order, shares (groups × steps)) of ``key`` per group:
    ``update_norm`` as the share of ‖Δ‖², ``lin_*`` as the signed share of Σ|·| (NaN where
    the step has no value)."""
    columns = {
        str(c).split("/")[1]: c
        for c in history.columns
        if str(c).startswith(f"{prefix}/") and str(c).endswith(f"/{key}")
    }
    groups = sorted(columns, key=group_sort_key)
    values = history[[columns[g] for g in groups]].apply(pd.to_numeric, errors="coerce")
    values = values[values.notna().any(axis=1)]
    steps = (
        pd.to_numeric(history.loc[values.index, "step"], errors="coerce").to_numpy(float)
        if "step" in history.columns
        else values.index.to_numpy(float)
    )
    block = values.to_numpy(float).T
    block = block**2 if key == "update_norm" else block
    total = np.nansum(np.abs(block), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(total > 0, block / total, np.nan)
    return steps, groups, shares


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around the probed steps (midpoints; half a gap at both ends)."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[2 * steps[0] - mid[0]], mid, [2 * steps[-1] - mid[-1]]])


def _panel(ax: Axes, history: pd.DataFrame, prefix: str, row: tuple, title: str):
    key, label, cmap, (low, high) = row
    steps, groups, shares = layer_shares(history, prefix, key)
    mesh = ax.pcolormesh(
        _edges(steps), np.arange(len(groups) + 1), shares, cmap=cmap, vmin=low, vmax=high
    )
    ax.set_yticks(np.arange(len(groups)) + 0.5, groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{title}\n{label}", fontsize=9)
    return mesh


def plot_layer_heatmap(
    histories: Mapping[str, pd.DataFrame] | None, runs: pd.DataFrame | None, path: str | Path
) -> Path:
    """The per-layer heatmaps (see the module docstring) of one run per optimizer, at most
    ``MAX_PANELS`` optimizers; "no data" when no history has per-layer keys."""
    hist = {
        str(r): h
        for r, h in (histories or {}).items()
        if isinstance(h, pd.DataFrame) and not h.empty and layer_prefix(h) is not None
    }
    if not hist:
        return no_data(path, TITLE, "no layer/* keys (probes.step.per_layer=true logs them)")
    opt_of = run_optimizers(runs)
    chosen: dict[str, str] = {}
    for run in run_order(list(hist), runs):
        chosen.setdefault(opt_of.get(run, run), run)
    shown = list(chosen.values())[:MAX_PANELS]
    labels = run_labels(shown, runs)
    n_groups = max(
        len(layer_shares(hist[r], layer_prefix(hist[r]), "update_norm")[1]) for r in shown
    )
    fig = new_figure(1.0 + 4.2 * len(shown), 2 * (0.9 + 0.3 * n_groups) + 0.6)
    axs = fig.subplots(len(ROWS), len(shown), squeeze=False)
    for j, run in enumerate(shown):
        prefix = layer_prefix(hist[run])
        for i, row in enumerate(ROWS):
            mesh = _panel(axs[i, j], hist[run], prefix, row, f"{labels[run]} ({prefix}/*)")
            if j == len(shown) - 1:
                fig.colorbar(mesh, ax=axs[i, :].tolist(), shrink=0.9, label=row[1])
    fig.suptitle(TITLE + " — one run per optimizer", fontsize=12)
    return save(fig, path)
