"""The order and colours shared by the figures and the report's tables: runs by optimizer,
seed and id; assumptions in the registry's order; one colour per optimizer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from optprobe.analysis.figures.canvas import is_empty
from optprobe.assumptions import ASSUMPTIONS

#: Display order of the assumption ids (the registry's); unknown ids follow in sorted order.
ASSUMPTION_ORDER: tuple[str, ...] = tuple(ASSUMPTIONS)

# no green or red: those mark held / violated steps in the trajectory plots
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#393b79",
    "#000000",
)


def optimizer_colors(optimizers: Sequence[str]) -> dict[str, str]:
    """A stable colour per optimizer name (sorted names through a fixed palette)."""
    names = sorted({str(o) for o in optimizers})
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def optimizer_legend(ax: Axes, colors: Mapping[str, str], **kwargs) -> None:
    """A legend with one colour patch per optimizer (nothing when there is no optimizer)."""
    if not colors:
        return
    handles = [Line2D([], [], color=c, lw=6, label=o) for o, c in colors.items()]
    ax.legend(handles=handles, title="optimizer", fontsize=8, title_fontsize=8, **kwargs)


def run_optimizers(runs: pd.DataFrame | None) -> dict[str, str]:
    """run_id -> optimizer name ("unknown" where runs lacks it)."""
    if is_empty(runs) or "run_id" not in runs.columns:
        return {}
    opts = runs["optimizer"] if "optimizer" in runs.columns else pd.Series("unknown", runs.index)
    return {
        str(r): ("unknown" if pd.isna(o) else str(o))
        for r, o in zip(runs["run_id"], opts, strict=False)
    }


def _seed(value) -> float:
    try:
        seed = float(value)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(seed) else seed


def run_order(run_ids: Sequence[str], runs: pd.DataFrame | None) -> list[str]:
    """Runs sorted by optimizer, then seed, then run_id; ids unknown to ``runs`` go last."""
    ids = list(dict.fromkeys(str(r) for r in run_ids))
    keys: dict[str, tuple] = {}
    if not is_empty(runs) and "run_id" in runs.columns:
        for _, row in runs.iterrows():
            rid = str(row["run_id"])
            keys[rid] = (0, str(row.get("optimizer", "")), _seed(row.get("seed", np.nan)), rid)
    return sorted(ids, key=lambda r: keys.get(r, (1, "", math.inf, r)))


def assumption_order(ids: Sequence[str]) -> list[str]:
    """``ids`` without repeats: the registry's in its order, then unknown ones sorted."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    known = [a for a in ASSUMPTION_ORDER if a in ids]
    return known + sorted(a for a in ids if a not in ASSUMPTION_ORDER)


def assumption_label(assumption: str, fallback: str | None = None) -> str:
    """The registry's label of an assumption id; for an id it does not know, ``fallback`` (a
    label found in the data) or the id itself."""
    if assumption in ASSUMPTIONS:
        return ASSUMPTIONS[assumption].label
    return fallback if fallback is not None and not pd.isna(fallback) else assumption
