"""The report's HTML tables (run-level comparison, correlations, excluded runs, per-run
verdicts, runs) and its glossary of what "held" means, taken from the assumptions registry."""

from __future__ import annotations

import math
from html import escape

import numpy as np
import pandas as pd

from optprobe.analysis.figures.ordering import assumption_label, assumption_order, run_order
from optprobe.analysis.report_text import cell, num, pct, pct_interval
from optprobe.assumptions import ASSUMPTIONS

__all__ = [
    "ASSUMPTION_CONDITIONS",
    "assumption_labels",
    "comparison_table",
    "correlation_table",
    "excluded_table",
    "glossary",
    "runs_table",
    "table_html",
    "verdict_matrix",
]

#: The glossary: assumption id -> its label, symbols and condition, all from the registry.
ASSUMPTION_CONDITIONS: dict[str, str] = {
    a.id: f"{a.label}: {a.symbols} ({a.condition})" for a in ASSUMPTIONS.values()
}

TEXT_CLASS = ' class="text"'  # a left-aligned cell


def table_html(header: list[str], rows: list[list[str]], *, text_cols: int = 1, row_classes=None):
    """An escaped HTML table; the first ``text_cols`` columns are left-aligned."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{TEXT_CLASS if j < text_cols else ''}>{escape(str(v))}</{tag}>"
            for j, v in enumerate(values)
        )

    out = ['<div class="scroll"><table>', f"<thead><tr>{cells('th', header)}</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes else ""
        out.append((f'<tr class="{escape(rc)}">' if rc else "<tr>") + cells("td", row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def comparison_table(comp: pd.DataFrame) -> str:
    """Per setting × optimizer × entry: runs, the mean run fraction, its t interval over runs,
    the pooled steps (for reference) and the label."""
    need = {"setting", "optimizer", "mean_run_fraction", "ci_low", "ci_high"}
    if comp.empty or not need <= set(comp.columns):
        return '<p class="missing">No optimizer comparison table.</p>'
    header = [
        "setting", "optimizer", "assumption", "runs", "excluded runs", "mean of run fractions",
        "95% t interval over runs", "pooled steps (held/checked)", "held on most steps?",
    ]  # fmt: skip
    rows = []
    for _, r in comp.iterrows():
        pooled = pct(r.get("pooled_fraction"))
        if math.isfinite(num(r.get("pooled_checked"))):
            pooled += f" ({cell(r.get('pooled_held'))}/{cell(r.get('pooled_checked'))})"
        rows.append(
            [
                str(r["setting"]),
                str(r["optimizer"]),
                str(r.get("assumption_label", r.get("assumption"))),
                cell(r.get("runs")),
                cell(r.get("runs_excluded")),
                pct(r.get("mean_run_fraction")),
                f"[{pct(r.get('ci_low'))}, {pct(r.get('ci_high'))}]",
                pooled,
                str(r.get("label", "")),
            ]
        )
    return table_html(header, rows, text_cols=3)


def correlation_table(corr: pd.DataFrame) -> str:
    """Within-optimizer correlations, sorted by Holm-adjusted p then |ρ|; rows that pass the
    correction marked."""
    if corr.empty:
        return '<p class="missing">No correlations.</p>'
    corr = corr.copy()
    corr["_abs"] = -pd.to_numeric(corr.get("rho", np.nan), errors="coerce").abs()
    corr["_p"] = pd.to_numeric(corr.get("pvalue_adjusted", np.nan), errors="coerce")
    corr = corr.sort_values(["_p", "_abs"], na_position="last")
    header = [
        "setting", "optimizer", "constant", "performance", "n", "Spearman ρ",
        "permutation p", "Holm-adjusted p", "passes", "cells (runs)", "ρ within cells",
        "within-cell Holm p", "passes within cells",
    ]  # fmt: skip
    rows, classes = [], []
    for _, r in corr.iterrows():
        sig = bool(r.get("significant", False))
        within = pd.notna(r.get("pvalue_within", np.nan))
        rows.append(
            [cell(r.get(c)) for c in ("setting", "optimizer", "constant", "performance", "n")]
            + [cell(r.get("rho")), cell(r.get("pvalue")), cell(r.get("pvalue_adjusted"))]
            + ["yes" if sig else "no"]
            + [
                f"{cell(r.get('cells'))} ({cell(r.get('n_within'))})" if within else "",
                cell(r.get("rho_within")),
                cell(r.get("pvalue_within_adjusted")),
            ]
            + [("yes" if bool(r.get("significant_within")) else "no") if within else ""]
        )
        classes.append("robust" if sig else "")
    return table_html(header, rows, text_cols=4, row_classes=classes)


def excluded_table(runs: pd.DataFrame) -> str:
    """The runs the analysis left out, with why."""
    if runs.empty or "included" not in runs.columns:
        return '<p class="missing">No run status (runs table without "included").</p>'
    out = runs[~runs["included"].astype(bool)]
    if out.empty:
        return "<p>None: every run was used.</p>"
    cols = [
        "run_id",
        "setting",
        "optimizer",
        "seed",
        "status",
        "exclusion_reason",
        "exclusion_detail",
    ]
    cols = [c for c in cols if c in out.columns]
    rows = [[cell(r.get(c)) for c in cols] for _, r in out.iterrows()]
    return table_html(cols, rows, text_cols=len(cols))


def assumption_labels(verdicts: pd.DataFrame, runs: pd.DataFrame) -> dict[str, str]:
    """Assumption id -> label (the registry's; for an unknown id the verdicts'), for every
    assumption the verdicts or the runs' ``held:*`` columns mention, in registry order."""
    found: dict[str, str] = {}
    if not verdicts.empty and "assumption" in verdicts.columns:
        labels = verdicts["label"] if "label" in verdicts.columns else [None] * len(verdicts)
        for a, lab in zip(verdicts["assumption"], labels):
            if found.get(str(a)) is None:
                found[str(a)] = None if lab is None or pd.isna(lab) else str(lab)
    ids = [*found, *(str(c).split(":", 1)[1] for c in runs.columns if str(c).startswith("held:"))]
    return {a: assumption_label(a, found.get(a)) for a in assumption_order(ids)}


def _verdict_cells(verdicts: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(run_id, assumption) -> ``fraction [interval] (held/checked)``."""
    cells: dict[tuple[str, str], str] = {}
    if not {"run_id", "assumption"} <= set(verdicts.columns):
        return cells
    for _, r in verdicts.iterrows():
        text = pct_interval(r.get("fraction"), r.get("ci_low"), r.get("ci_high"))
        held, checked = num(r.get("held")), num(r.get("checked"))
        if math.isfinite(held) and math.isfinite(checked):
            text += f" ({int(held)}/{int(checked)})"
        cells[(str(r["run_id"]), str(r["assumption"]))] = text
    return cells


def verdict_matrix(verdicts: pd.DataFrame, runs: pd.DataFrame, labels: dict[str, str]) -> str:
    """Runs × assumptions: whether the run is used, fraction held [interval] and
    held/checked."""
    if not labels:
        return '<p class="missing">No verdicts.</p>'
    run_ids = [str(r) for df in (runs, verdicts) if "run_id" in df.columns for r in df["run_id"]]
    cells = _verdict_cells(verdicts)
    run_info: dict[str, pd.Series] = {}
    if "run_id" in runs.columns:
        run_info = {str(r["run_id"]): r for _, r in runs.iterrows()}
    for rid, r in run_info.items():  # fall back to the runs table's held:* columns
        for a in labels:
            if (rid, a) not in cells and f"held:{a}" in runs.columns:
                cells[(rid, a)] = pct(r[f"held:{a}"])
    header = ["run_id", "optimizer", "seed", "used"] + [
        lab if lab == a else f"{lab} ({a})" for a, lab in labels.items()
    ]
    rows = []
    for rid in run_order(run_ids, runs):
        info = run_info.get(rid, {})
        rows.append(
            [rid, cell(info.get("optimizer")), cell(info.get("seed")), _used(info)]
            + [cells.get((rid, a), "—") for a in labels]
        )
    return table_html(header, rows, text_cols=2)


def _used(info) -> str:
    """``yes``, ``no: <reasons>`` or ``—`` when the runs table has no status."""
    included = info.get("included") if hasattr(info, "get") else None
    if included is None or (isinstance(included, float) and math.isnan(included)):
        return "—"
    return "yes" if bool(included) else f"no: {info.get('exclusion_reason', '')}"


def glossary(labels: dict[str, str]) -> list[str]:
    """HTML list items: what "held" means for each assumption in ``labels``."""
    items = []
    for a, lab in labels.items():
        text = ASSUMPTION_CONDITIONS.get(a, f"{lab}: see the probe documentation")
        items.append(f"<li><b>{escape(a)}</b>: {escape(text)}</li>")
    return items


def runs_table(runs: pd.DataFrame) -> str:
    """Every column of the runs table, runs ordered by optimizer, seed and id."""
    if runs.empty:
        return '<p class="missing">No runs.</p>'
    ordered = runs
    if "run_id" in runs.columns:
        rank = {r: i for i, r in enumerate(run_order([str(r) for r in runs["run_id"]], runs))}
        ordered = runs.iloc[np.argsort([rank[str(r)] for r in runs["run_id"]], kind="stable")]
    header = [str(c) for c in ordered.columns]
    rows = [[cell(v) for v in row] for row in ordered.itertuples(index=False)]
    text_cols = 1 if header and header[0] == "run_id" else 0
    return table_html(header, rows, text_cols=text_cols)
