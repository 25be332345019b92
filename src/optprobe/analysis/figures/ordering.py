"""The order, names and colours shared by the figures and the report's tables: runs by
optimizer, seed and id (named by optimizer and seed); verdict keys in the registry's order of
assumptions and variants; one colour per optimizer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from optprobe.analysis.figures.canvas import is_empty
from optprobe.analysis.verdict_keys import key_label
from optprobe.assumptions import ASSUMPTIONS, verdict_rank

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


def optimizer_legend(ax: Axes | Figure, colors: Mapping[str, str], **kwargs) -> None:
    """A legend on an axes or a figure with one colour patch per optimizer (nothing when there
    is no optimizer)."""
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
    """Runs sorted by setting, optimizer, seed and run_id; ids unknown to ``runs`` go last."""
    ids = list(dict.fromkeys(str(r) for r in run_ids))
    keys: dict[str, tuple] = {}
    if not is_empty(runs) and "run_id" in runs.columns:
        for _, row in runs.iterrows():
            rid = str(row["run_id"])
            head = (str(row.get("setting", "")), str(row.get("optimizer", "")))
            keys[rid] = (0, *head, _seed(row.get("seed", np.nan)), rid)
    return sorted(ids, key=lambda r: keys.get(r, (1, "", "", math.inf, r)))


def assumption_order(ids: Sequence[str]) -> list[str]:
    """Verdict keys (assumption ids or variant ids) without repeats, in the registry's order of
    assumptions and variants, then unknown ones sorted."""
    return sorted(dict.fromkeys(str(i) for i in ids), key=verdict_rank)


def assumption_label(assumption: str, fallback: str | None = None) -> str:
    """The registry's label of a verdict key (its variant's label where it names one); for a
    key it does not know, ``fallback`` (a label found in the data) or the key itself."""
    if fallback is not None and pd.isna(fallback):
        fallback = None
    return key_label(assumption, fallback)


def run_labels(run_ids: Sequence[str], runs: pd.DataFrame | None) -> dict[str, str]:
    """run_id -> ``<optimizer> s<seed>`` (the setting first when the runs have several; the
    run_id added where two runs would read the same); the run_id for runs ``runs`` lacks."""
    info: dict[str, pd.Series] = {}
    if not is_empty(runs) and "run_id" in runs.columns:
        info = {str(r["run_id"]): r for _, r in runs.iterrows()}
    settings = {str(r.get("setting")) for r in info.values() if pd.notna(r.get("setting"))}
    labels = {}
    for rid in run_ids:
        row = info.get(str(rid))
        if row is None or pd.isna(row.get("optimizer")):
            labels[str(rid)] = str(rid)
            continue
        seed = _seed(row.get("seed"))
        text = f"{row['optimizer']} s{int(seed)}" if math.isfinite(seed) else str(row["optimizer"])
        if len(settings) > 1:
            text = f"{row.get('setting')} {text}"
        labels[str(rid)] = text
    counts = pd.Series(list(labels.values())).value_counts()
    return {r: (f"{t} ({r})" if counts[t] > 1 and t != r else t) for r, t in labels.items()}
