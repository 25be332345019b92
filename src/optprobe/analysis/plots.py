"""Figures for a sweep of probed runs (PNG, drawn on ``matplotlib.figure.Figure`` objects).

Every function takes the tidy tables produced by the analysis (see ``report.py`` for their
schema), writes one PNG to ``path`` and returns that path. None of them touches pyplot's global
state, and none of them raises on missing columns or empty tables: a panel without data is
skipped, and a figure without any panel says "no data" instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from optprobe.assumptions import ASSUMPTIONS, Assumption

__all__ = [
    "ASSUMPTION_ORDER",
    "COMPARISON_MEASURES",
    "DEFAULT_TRAJECTORY_KEYS",
    "HELD_CONDITIONS",
    "optimizer_colors",
    "plot_constant_vs_performance",
    "plot_held_fractions",
    "plot_optimizer_comparison",
    "plot_trajectories",
]

DPI = 110

#: Canonical display order of the assumption ids; unknown ids follow in sorted order.
ASSUMPTION_ORDER: tuple[str, ...] = tuple(ASSUMPTIONS)

#: Comparison-table measures (column stem, human label), in plotting order.
COMPARISON_MEASURES: tuple[tuple[str, str], ...] = (
    ("smoothness_predicts", "L-smoothness predicts progress"),
    ("convexity_holds", "convexity along step (from x_{t+1})"),
    ("convexity_old_holds", "convexity along step (from x_t)"),
    ("ref_convexity_holds", "convexity w.r.t. reference x*"),
)

#: Panels drawn by :func:`plot_trajectories` by default. ``step/descent_bound`` is drawn
#: together with ``step/loss_change`` (what the L-smooth analysis predicted against what happened).
DEFAULT_TRAJECTORY_KEYS: tuple[str, ...] = (
    "step/inst_gap",
    "step/inst_gap_old",
    "ref/gap",
    "step/descent_bound",
)

_TRAJECTORY_TITLES = {
    "step/inst_gap": "convexity along the step, from x_{t+1}: inst_gap (held: ≤ 0)",
    "step/inst_gap_old": "convexity along the step, from x_t: inst_gap_old (held: ≥ 0)",
    "ref/gap": "convexity w.r.t. reference x*: ref/gap (held: ≤ 0)",
    "step/descent_bound": (
        "L-smooth prediction: loss_change (solid) vs descent_bound (dashed)\n"
        "(held: bound ≥ loss_change and bound < 0)"
    ),
    "step/loss_change": "loss change on the step's batch",
    "train/loss": "training loss",
}


#: Per-step "held" condition for each history key that has one: (columns needed, condition).
def _held_on_rows(assumption: Assumption) -> Callable[[pd.DataFrame], pd.Series]:
    def held(df: pd.DataFrame) -> pd.Series:
        tol_key = assumption.tolerance_key
        tol = df[tol_key].fillna(0.0) if tol_key in df.columns else 0.0
        return assumption.holds({k: df[k] for k in assumption.keys}, tol)

    return held


HELD_CONDITIONS: dict[str, tuple[tuple[str, ...], Callable[[pd.DataFrame], pd.Series]]] = {
    a.keys[0]: (a.keys, _held_on_rows(a)) for a in ASSUMPTIONS.values() if a.kind == "sign"
}

_HELD_COLOR = "#1a9850"
_VIOLATED_COLOR = "#d73027"
_MAX_MARKERS = 2000  # held/violated markers per panel, shared by the runs


# --------------------------------------------------------------------------------------------
# helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def _no_data(path: str | Path, title: str, reason: str) -> Path:
    fig = _figure(8, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=12)
    ax.text(0.5, 0.5, f"no data\n{reason}", ha="center", va="center", fontsize=12, color="0.35")
    return _save(fig, path)


def _is_empty(df: pd.DataFrame | None) -> bool:
    return df is None or not isinstance(df, pd.DataFrame) or df.empty


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(max_cols, n))
    return math.ceil(n / ncols), ncols


def _axes(fig: Figure, n: int, max_cols: int = 3, **kwargs) -> list:
    nrows, ncols = _grid(n, max_cols)
    axs = fig.subplots(nrows, ncols, squeeze=False, **kwargs).ravel().tolist()
    for ax in axs[n:]:
        ax.set_axis_off()
    return axs[:n]


def optimizer_colors(optimizers: Sequence[str]) -> dict[str, str]:
    """A stable colour per optimizer name (sorted names through a fixed palette)."""
    # no green or red: those mark held / violated steps in the trajectory plots
    palette = [
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
    ]
    names = sorted({str(o) for o in optimizers})
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _run_optimizers(runs: pd.DataFrame | None) -> dict[str, str]:
    """run_id -> optimizer name ("unknown" where runs lacks it)."""
    if _is_empty(runs) or "run_id" not in runs.columns:
        return {}
    opts = runs["optimizer"] if "optimizer" in runs.columns else pd.Series("unknown", runs.index)
    return {
        str(r): ("unknown" if pd.isna(o) else str(o))
        for r, o in zip(runs["run_id"], opts, strict=False)
    }


def _run_order(run_ids: Sequence[str], runs: pd.DataFrame | None) -> list[str]:
    """Runs sorted by optimizer, then seed, then run_id; ids unknown to ``runs`` go last."""
    ids = list(dict.fromkeys(str(r) for r in run_ids))
    keys: dict[str, tuple] = {}
    if not _is_empty(runs) and "run_id" in runs.columns:
        for _, row in runs.iterrows():
            seed = row.get("seed", np.nan)
            try:
                seed = float(seed)
            except (TypeError, ValueError):
                seed = np.nan
            keys[str(row["run_id"])] = (
                0,
                str(row.get("optimizer", "")),
                math.inf if math.isnan(seed) else seed,
                str(row["run_id"]),
            )
    return sorted(ids, key=lambda r: keys.get(r, (1, "", math.inf, r)))


def _assumption_order(ids: Sequence[str]) -> list[str]:
    ids = list(dict.fromkeys(str(i) for i in ids))
    known = [a for a in ASSUMPTION_ORDER if a in ids]
    return known + sorted(a for a in ids if a not in ASSUMPTION_ORDER)


def _optimizer_legend(ax, colors: Mapping[str, str], **kwargs) -> None:
    if not colors:
        return
    handles = [Line2D([], [], color=c, lw=6, label=o) for o, c in colors.items()]
    ax.legend(handles=handles, title="optimizer", fontsize=8, title_fontsize=8, **kwargs)


def _fmt_num(x: float, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


# --------------------------------------------------------------------------------------------
# held fractions per run


def _held_table(verdicts: pd.DataFrame | None, runs: pd.DataFrame | None) -> pd.DataFrame:
    """Long table (run_id, assumption, label, fraction, ci_low, ci_high) from the verdicts, or
    from the runs' ``held:*`` columns (no interval) where the verdicts are missing."""
    cols = ["run_id", "assumption", "label", "fraction", "ci_low", "ci_high"]
    if not _is_empty(verdicts) and {"run_id", "assumption"} <= set(verdicts.columns):
        out = verdicts.copy()
        if "fraction" not in out.columns:
            if {"held", "checked"} <= set(out.columns):
                checked = pd.to_numeric(out["checked"], errors="coerce")
                out["fraction"] = pd.to_numeric(out["held"], errors="coerce") / checked.where(
                    checked > 0
                )
            else:
                out["fraction"] = np.nan
        for c in ("ci_low", "ci_high"):
            if c not in out.columns:
                out[c] = np.nan
        if "label" not in out.columns:
            out["label"] = out["assumption"]
        out["run_id"] = out["run_id"].astype(str)
        out["assumption"] = out["assumption"].astype(str)
        return out[cols]
    if not _is_empty(runs) and "run_id" in runs.columns:
        held_cols = [c for c in runs.columns if str(c).startswith("held:")]
        rows = []
        for _, row in runs.iterrows():
            for c in held_cols:
                a = str(c).split(":", 1)[1]
                rows.append((str(row["run_id"]), a, a, row[c], np.nan, np.nan))
        return pd.DataFrame(rows, columns=cols)
    return pd.DataFrame(columns=cols)


def plot_held_fractions(
    verdicts: pd.DataFrame | None, runs: pd.DataFrame | None, path: str | Path
) -> Path:
    """One panel per assumption: the fraction of probed steps on which it held, one bar per run
    (labelled by run_id, coloured by optimizer) with its confidence interval as error bar."""
    title = "Fraction of probed steps on which each assumption held"
    table = _held_table(verdicts, runs)
    if table.empty:
        return _no_data(path, title, "no verdicts and no held:* columns")
    run_ids = list(table["run_id"])
    if not _is_empty(runs) and "run_id" in runs.columns:
        run_ids = [str(r) for r in runs["run_id"]] + run_ids
    order = _run_order(run_ids, runs)
    opt_of = _run_optimizers(runs)
    colors = optimizer_colors([opt_of.get(r, "unknown") for r in order])
    assumptions = _assumption_order(table["assumption"])
    labels = (
        table.dropna(subset=["label"])
        .drop_duplicates("assumption")
        .set_index("assumption")["label"]
    )

    n = len(assumptions)
    max_cols = 3 if len(order) <= 8 else 2 if len(order) <= 16 else 1
    _, ncols = _grid(n, max_cols)
    nrows = math.ceil(n / ncols)
    panel_w = min(max(3.2, 0.32 * len(order) + 1.2), 12.0)
    label_h = min(0.07 * max(len(r) for r in order), 2.0)
    fig = _figure(panel_w * ncols, (2.6 + label_h) * nrows + 0.6)
    axs = _axes(fig, n, max_cols, sharey=True)
    x = np.arange(len(order))
    pos = {r: i for i, r in enumerate(order)}
    for ax, a in zip(axs, assumptions, strict=False):
        sub = table[table["assumption"] == a].drop_duplicates("run_id", keep="last")
        frac = np.full(len(order), np.nan)
        lo = np.full(len(order), np.nan)
        hi = np.full(len(order), np.nan)
        for _, row in sub.iterrows():
            i = pos[row["run_id"]]
            frac[i] = pd.to_numeric(row["fraction"], errors="coerce")
            lo[i] = pd.to_numeric(row["ci_low"], errors="coerce")
            hi[i] = pd.to_numeric(row["ci_high"], errors="coerce")
        bar_colors = [colors[opt_of.get(r, "unknown")] for r in order]
        ax.bar(x, np.nan_to_num(frac, nan=0.0), color=bar_colors, width=0.75, alpha=0.85)
        has_ci = np.isfinite(frac) & np.isfinite(lo) & np.isfinite(hi)
        if has_ci.any():
            err = np.vstack([np.clip(frac - lo, 0, None), np.clip(hi - frac, 0, None)])
            ax.errorbar(
                x[has_ci],
                frac[has_ci],
                yerr=err[:, has_ci],
                fmt="none",
                ecolor="black",
                elinewidth=1,
                capsize=2,
            )
        for i in np.flatnonzero(~np.isfinite(frac)):
            ax.text(x[i], 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
        label = str(labels.get(a, a))
        ax.set_title(label if label == a else f"{label}\n({a})", fontsize=9)
        ax.set_xticks(x, order, rotation=60, ha="right", fontsize=7)
        pad = max(0.0, (4 - len(order)) / 2)  # keep bars narrow when there are few runs
        ax.set_xlim(-0.5 - pad, len(order) - 0.5 + pad)
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.grid(axis="y", alpha=0.3)
    for i, ax in enumerate(axs):
        if i % ncols == 0:
            ax.set_ylabel("fraction held")
    _optimizer_legend(axs[0], colors, loc="upper left")
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# per-step trajectories


def _symlog_threshold(values: list[np.ndarray]) -> float:
    arr = np.concatenate([np.abs(v) for v in values]) if values else np.array([])
    arr = arr[np.isfinite(arr) & (arr > 0)]
    if arr.size == 0:
        return 1.0
    # linear around 0 below the 10% quantile of |value|, but show at most ~4 decades per sign;
    # a power of ten, so that the tick at ±linthresh sits at the edge of the linear band
    thresh = max(np.quantile(arr, 0.1), arr.max() * 1e-4)
    return float(10.0 ** math.floor(math.log10(thresh)))


def _subsample(n: int, limit: float) -> slice:
    return slice(None, None, max(1, math.ceil(n / limit)))


def plot_trajectories(
    histories: Mapping[str, pd.DataFrame] | None,
    runs: pd.DataFrame | None,
    path: str | Path,
    keys: Sequence[str] = DEFAULT_TRAJECTORY_KEYS,
) -> Path:
    """One panel per key with one line per run over steps (coloured by optimizer) and the probed
    steps where the assumption held (green dots) or was violated (red crosses) marked on the
    curve. ``step/descent_bound`` is drawn together with ``step/loss_change``. Keys absent from
    every history are skipped."""
    title = "Per-step probe values (symlog y)"
    hist = {
        str(r): h
        for r, h in (histories or {}).items()
        if isinstance(h, pd.DataFrame) and not h.empty
    }
    if not hist:
        return _no_data(path, title, "no per-step histories")
    order = _run_order(list(hist), runs)
    opt_of = _run_optimizers(runs)
    colors = optimizer_colors([opt_of.get(r, "unknown") for r in order])

    panels: list[str] = []
    for key in dict.fromkeys(keys):
        if any(key in h.columns and h[key].notna().any() for h in hist.values()):
            panels.append(key)
    if not panels:
        return _no_data(path, title, "none of the keys " + ", ".join(keys) + " was measured")

    n = len(panels)
    nrows, ncols = _grid(n, max_cols=2)
    fig = _figure(7.0 * ncols, 3.6 * nrows + 0.7)
    axs = _axes(fig, n, max_cols=2)
    alpha = 0.8 if len(order) <= 6 else 0.5
    for ax, key in zip(axs, panels, strict=False):
        shown: list[np.ndarray] = []
        n_held = n_checked = 0
        for run in order:
            h = hist[run]
            if key not in h.columns:
                continue
            color = colors[opt_of.get(run, "unknown")]
            steps = h["step"] if "step" in h.columns else pd.Series(np.arange(len(h)), h.index)
            steps = pd.to_numeric(steps, errors="coerce")
            value = pd.to_numeric(h[key], errors="coerce")
            ok = value.notna() & steps.notna()
            if not ok.any():
                continue
            xs, ys = steps[ok].to_numpy(float), value[ok].to_numpy(float)
            is_bound = key == "step/descent_bound"
            ax.plot(xs, ys, color=color, lw=1.0, alpha=alpha, ls="--" if is_bound else "-")
            shown.append(ys)
            marker_y = ys
            if is_bound and "step/loss_change" in h.columns:
                change = pd.to_numeric(h["step/loss_change"], errors="coerce")
                ok_change = change.notna() & steps.notna()
                cy = change[ok_change].to_numpy(float)
                ax.plot(steps[ok_change].to_numpy(float), cy, color=color, lw=1.0, alpha=alpha)
                shown.append(cy)
                marker_y = change[ok].to_numpy(float)
            need, cond = HELD_CONDITIONS.get(key, ((), None))
            if cond is None or not all(c in h.columns for c in need):
                continue
            frame = h.loc[ok, list(need)].apply(pd.to_numeric, errors="coerce")
            measured = frame.notna().all(axis=1).to_numpy()
            held = cond(frame).to_numpy(bool) & measured
            violated = ~held & measured
            n_held += int(held.sum())
            n_checked += int(measured.sum())
            sub = _subsample(len(xs), max(30, _MAX_MARKERS / len(order)))
            idx = np.arange(len(xs))[sub]
            my = np.where(np.isfinite(marker_y), marker_y, ys)
            hi, vi = idx[held[idx]], idx[violated[idx]]
            ax.scatter(xs[hi], my[hi], s=9, color=_HELD_COLOR, zorder=3, linewidths=0)
            ax.scatter(xs[vi], my[vi], s=14, color=_VIOLATED_COLOR, marker="x", zorder=3, lw=0.8)
        ax.set_yscale("symlog", linthresh=_symlog_threshold(shown), linscale=1.0)
        ax.axhline(0, color="0.3", lw=0.7)
        ax.set_xlabel("step")
        ax.set_ylabel(key if key != "step/descent_bound" else "loss change / bound")
        sub_title = _TRAJECTORY_TITLES.get(key, key)
        if n_checked:
            sub_title += f"\nheld on {n_held}/{n_checked} probed steps ({n_held / n_checked:.0%})"
        ax.set_title(sub_title, fontsize=9)
        ax.grid(alpha=0.3)

    handles = [Line2D([], [], color=c, lw=2, label=o) for o, c in colors.items()]
    handles += [
        Line2D([], [], color=_HELD_COLOR, marker="o", ls="", ms=4, label="held"),
        Line2D([], [], color=_VIOLATED_COLOR, marker="x", ls="", ms=5, label="violated"),
    ]
    axs[0].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title + f" — {len(order)} run(s)", fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# fitted constants against performance


def _correlation_row(
    correlations: pd.DataFrame | None, constant: str, performance: str
) -> pd.Series | None:
    if _is_empty(correlations) or not {"constant", "performance"} <= set(correlations.columns):
        return None
    bare = constant.split(":", 1)[1] if constant.startswith("const:") else constant
    names = correlations["constant"].astype(str)
    perf = correlations["performance"].astype(str)
    hit = correlations[names.isin([bare, constant]) & (perf == performance)]
    return None if hit.empty else hit.iloc[0]


def plot_constant_vs_performance(
    runs: pd.DataFrame | None,
    correlations: pd.DataFrame | None,
    path: str | Path,
    performance: str = "final_train_loss",
) -> Path:
    """A scatter panel per fitted constant (``const:*`` column): constant (log x when all
    positive) against ``performance``, coloured by optimizer, titled with Spearman's rho and its
    bootstrap interval from ``correlations``."""
    title = f"Fitted constants against {performance} (one point per run)"
    if _is_empty(runs):
        return _no_data(path, title, "no runs")
    constants = [c for c in runs.columns if str(c).startswith("const:")]
    if performance not in runs.columns:
        return _no_data(path, title, f"runs table has no column {performance!r}")
    if not constants:
        return _no_data(path, title, "runs table has no const:* columns")
    opts = (
        runs["optimizer"].astype(str)
        if "optimizer" in runs.columns
        else pd.Series("unknown", runs.index)
    )
    colors = optimizer_colors(list(opts))
    y_all = pd.to_numeric(runs[performance], errors="coerce")

    n = len(constants)
    nrows, ncols = _grid(n)
    fig = _figure(max(6.5, 4.3 * ncols), 3.5 * nrows + 0.6)
    axs = _axes(fig, n)
    for ax, const in zip(axs, constants, strict=False):
        x = pd.to_numeric(runs[const], errors="coerce")
        ok = np.isfinite(x) & np.isfinite(y_all)
        for opt, color in colors.items():
            sel = ok & (opts == opt)
            if sel.any():
                ax.scatter(x[sel], y_all[sel], color=color, s=28, alpha=0.85, label=opt)
        xs = x[ok].to_numpy(float)
        if xs.size and (xs > 0).all():
            ax.set_xscale("log")
        name = const.split(":", 1)[1]
        row = _correlation_row(correlations, const, performance)
        if row is not None:
            rho = pd.to_numeric(row.get("rho", np.nan), errors="coerce")
            lo = pd.to_numeric(row.get("ci_low", np.nan), errors="coerce")
            hi = pd.to_numeric(row.get("ci_high", np.nan), errors="coerce")
            n_corr = row.get("n", np.nan)
            n_txt = f", n={int(n_corr)}" if pd.notna(n_corr) else ""
            stats = f"Spearman ρ = {_fmt_num(rho)} [{_fmt_num(lo)}, {_fmt_num(hi)}]{n_txt}"
        else:
            stats = "Spearman ρ: not computed"
        ax.set_title(f"{name}\n{stats}", fontsize=9)
        dropped = int((~ok).sum())
        if dropped:
            ax.text(
                0.98,
                0.02,
                f"{dropped} run(s) without value",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.4",
            )
        if not ok.any():
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_xlabel(name)
        ax.set_ylabel(performance)
        ax.grid(alpha=0.3)
    _optimizer_legend(axs[0], colors, loc="best")
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# headline comparison across optimizers


def plot_optimizer_comparison(comparison: pd.DataFrame | None, path: str | Path) -> Path:
    """Grouped bars per optimizer: how often L-smoothness predicted the progress against how
    often the convexity identities held (mean over runs), with the given intervals as whiskers."""
    title = "How often does each analysis describe the step?\n(mean over runs, 95% interval)"
    if _is_empty(comparison) or "optimizer" not in comparison.columns:
        return _no_data(path, title, "empty optimizer comparison table")
    measures = [
        (col, label)
        for col, label in COMPARISON_MEASURES
        if col in comparison.columns
        and pd.to_numeric(comparison[col], errors="coerce").notna().any()
    ]
    if not measures:
        return _no_data(path, title, "no comparison measure present")
    table = comparison.reset_index(drop=True)
    n_opt = len(table)
    width = 0.8 / len(measures)
    fig = _figure(max(6.0, 1.0 + n_opt * (0.55 * len(measures) + 0.6)), 4.6)
    ax = fig.add_subplot()
    x = np.arange(n_opt)
    bar_colors = ["#4575b4", "#fc8d59", "#fee090", "#91bfdb"]
    for j, (col, label) in enumerate(measures):
        vals = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        xs = x - 0.4 + width * (j + 0.5)
        ax.bar(
            xs,
            np.nan_to_num(vals, nan=0.0),
            width=width * 0.95,
            color=bar_colors[j % len(bar_colors)],
            edgecolor="0.3",
            lw=0.5,
            label=label,
        )
        lo_c, hi_c = f"{col}_low", f"{col}_high"
        hi = np.full_like(vals, np.nan)
        if lo_c in table.columns and hi_c in table.columns:
            lo = pd.to_numeric(table[lo_c], errors="coerce").to_numpy(float)
            hi = pd.to_numeric(table[hi_c], errors="coerce").to_numpy(float)
            ok = np.isfinite(vals) & np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
                ax.errorbar(
                    xs[ok], vals[ok], yerr=err[:, ok], fmt="none", ecolor="black", capsize=3
                )
        for xi, v, top in zip(xs, vals, hi, strict=False):
            if not np.isfinite(v):
                ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            y = max(v, top) if np.isfinite(top) else v
            ax.text(xi, y + 0.015, f"{v:.0%}", ha="center", va="bottom", fontsize=7)
    names = []
    for _, row in table.iterrows():
        n_runs = row.get("n_runs", np.nan)
        names.append(
            f"{row['optimizer']}\n({int(n_runs)} run{'' if n_runs == 1 else 's'})"
            if pd.notna(n_runs)
            else str(row["optimizer"])
        )
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of probed steps")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=min(2, len(measures)),
        frameon=False,
    )
    ax.set_title(title, fontsize=11)
    return _save(fig, path)
