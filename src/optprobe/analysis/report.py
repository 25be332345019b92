"""One self-contained static HTML report for a sweep of probed runs.

``write_report`` takes the analysis tables and writes, into one folder:

- ``runs.csv``, ``verdicts.csv``, ``correlations.csv``, ``comparison.csv`` (the tables as given);
- ``held_fractions.png``, ``trajectories.png``, ``constants_vs_performance.png``,
  ``optimizer_comparison.png`` (see :mod:`optprobe.analysis.plots`);
- ``report.html``: inline CSS, no JavaScript, no external resource; images and CSVs are
  referenced by relative file name, so the folder can be moved or archived as a whole.

Table schema (any column may be missing; the report says so instead of failing):

- ``runs``: one row per run: ``run_id``, ``optimizer``, ``model``, ``data``, ``seed``, config
  columns, ``final_train_loss``, ``steps_to_target``, ``final_val_loss``, ``final_val_acc``,
  ``held:<assumption>`` and ``const:<constant>`` columns.
- ``verdicts``: one row per (run, assumption): ``run_id``, ``assumption``, ``label``, ``held``,
  ``checked``, ``fraction``, ``ci_low``, ``ci_high``.
- ``correlations``: one row per (constant, performance): ``constant``, ``performance``, ``n``,
  ``rho``, ``ci_low``, ``ci_high``, ``pvalue``.
- ``comparison``: one row per optimizer: ``optimizer``, ``n_runs`` and, each with ``_low`` and
  ``_high``, ``smoothness_predicts``, ``convexity_holds``, ``convexity_old_holds``,
  ``ref_convexity_holds``.
- ``histories``: run_id -> per-step DataFrame (``step`` and probe keys).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from optprobe.analysis.plots import (
    COMPARISON_MEASURES,
    _assumption_order,
    _run_order,
    plot_constant_vs_performance,
    plot_held_fractions,
    plot_optimizer_comparison,
    plot_trajectories,
)
from optprobe.assumptions import ASSUMPTIONS

__all__ = [
    "ASSUMPTION_CONDITIONS",
    "FIGURES",
    "TABLES",
    "answer_sentences",
    "correlation_sentence",
    "optimizer_sentence",
    "write_report",
]

#: CSV file names, in the order they are listed in the report.
TABLES: tuple[str, ...] = ("runs.csv", "verdicts.csv", "correlations.csv", "comparison.csv")

#: Figure file name -> (section heading, caption).
FIGURES: dict[str, tuple[str, str]] = {
    "optimizer_comparison.png": (
        "Smoothness against convexity, per optimizer",
        "Mean over runs of the fraction of probed steps on which the L-smooth descent bound "
        "predicted the progress made, and on which the convexity identities held; whiskers are "
        "95% intervals over runs.",
    ),
    "held_fractions.png": (
        "Fraction held, per run and assumption",
        "Fraction of probed steps on which each assumption held, one bar per run (coloured by "
        "optimizer), with its confidence interval.",
    ),
    "trajectories.png": (
        "Per-step trajectories",
        "Probe values over training, one line per run; green dots mark probed steps where the "
        "assumption held, red crosses steps where it was violated (symmetric-log y axis).",
    ),
    "constants_vs_performance.png": (
        "Fitted constants against performance",
        "Each fitted constant against the final training loss, one point per run, with Spearman's "
        "rank correlation and its bootstrap 95% interval.",
    ),
}

#: What "held" means for each assumption id.
ASSUMPTION_CONDITIONS: dict[str, str] = {
    a.id: f"{a.label}: {a.symbols}" for a in ASSUMPTIONS.values()
}

_OPTIMIZER_NAMES = {
    "sgd": "SGD",
    "sgdm": "SGDM",
    "adam": "Adam",
    "adamw": "AdamW",
    "lion": "Lion",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
}

_MAX_LISTED = 5  # robust correlations named in the answer

_PERFORMANCE_NAMES = {
    "final_train_loss": "final training loss",
    "steps_to_target": "steps to the target loss",
    "final_val_loss": "final validation loss",
    "final_val_acc": "final validation accuracy",
}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; padding-bottom: .15em; }
.answer { background: #f3f7fb; border-left: 5px solid #4575b4; padding: .6em 1.2em; }
.answer li { margin: .35em 0; }
.meta { color: #666; font-size: .9em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
.missing { color: #a33; font-style: italic; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; white-space: nowrap; }
th { background: #eee; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
tr.robust td { background: #fff1cc; }
.small { color: #777; font-size: .85em; }
"""


# --------------------------------------------------------------------------------------------
# formatting helpers


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _pct(x) -> str:
    v = _num(x)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.0f}%"


def _pct_interval(value, low, high) -> str:
    """``12% [8–17%]`` (the interval only where both ends are finite)."""
    v, lo, hi = _num(value), _num(low), _num(high)
    if not math.isfinite(v):
        return "n/a"
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{100 * v:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}%]"
    return f"{100 * v:.0f}%"


def _fmt(x) -> str:
    """A table cell: numbers to 4 significant digits, missing values as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            return "—" if math.isnan(float(x)) else str(float(x))
        if float(x).is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{float(x):.4g}"
    try:
        if pd.isna(x):
            return "—"
    except (TypeError, ValueError):
        pass
    return str(x)


def _pretty_optimizer(name) -> str:
    s = str(name)
    return _OPTIMIZER_NAMES.get(s.lower(), s)


def _frame(df) -> pd.DataFrame:
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame()


def _excludes_zero(low, high) -> bool:
    lo, hi = _num(low), _num(high)
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def _table_html(header: list[str], rows: list[list[str]], *, text_cols: int = 1, row_classes=None):
    """An escaped HTML table; the first ``text_cols`` columns are left-aligned."""
    out = ['<div class="scroll"><table>', "<thead><tr>"]
    for j, h in enumerate(header):
        cls = ' class="text"' if j < text_cols else ""
        out.append(f"<th{cls}>{escape(str(h))}</th>")
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes else ""
        out.append(f'<tr class="{escape(rc)}">' if rc else "<tr>")
        for j, cell in enumerate(row):
            cls = ' class="text"' if j < text_cols else ""
            out.append(f"<td{cls}>{escape(str(cell))}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# the answer in words


def optimizer_sentence(row: Mapping) -> str:
    """One or two sentences on one optimizer's row of the comparison table."""
    name = _pretty_optimizer(row.get("optimizer", "?"))
    n_runs = _num(row.get("n_runs"))
    head = (
        f"{name} ({int(n_runs)} run{'s' if n_runs != 1 else ''})" if math.isfinite(n_runs) else name
    )

    def part(col: str) -> str | None:
        if not math.isfinite(_num(row.get(col))):
            return None
        return _pct_interval(row.get(col), row.get(f"{col}_low"), row.get(f"{col}_high"))

    smooth, conv = part("smoothness_predicts"), part("convexity_holds")
    conv_old, ref = part("convexity_old_holds"), part("ref_convexity_holds")
    clauses = []
    if smooth:
        clauses.append(f"L-smoothness predicted the progress on {smooth} of probed steps")
    if conv and conv_old:
        clauses.append(
            f"convexity along the step held on {conv} (seen from x_{{t+1}}) and on {conv_old} "
            "(seen from x_t)"
        )
    elif conv:
        clauses.append(f"convexity along the step held on {conv} (seen from x_{{t+1}})")
    elif conv_old:
        clauses.append(f"convexity along the step held on {conv_old} (seen from x_t)")
    if ref:
        clauses.append(f"convexity with respect to the reference point held on {ref}")
    if not clauses:
        return f"{head}: no assumption was measured."
    text = f"{head}: " + "; ".join(clauses) + "."

    s_lo, s_hi = _num(row.get("smoothness_predicts_low")), _num(row.get("smoothness_predicts_high"))
    c_lo, c_hi = _num(row.get("convexity_holds_low")), _num(row.get("convexity_holds_high"))
    if smooth and conv and all(math.isfinite(v) for v in (s_lo, s_hi, c_lo, c_hi)):
        if c_lo > s_hi:
            text += (
                " Convexity along the step held clearly more often than L-smoothness predicted "
                "progress (the intervals do not overlap), as the reference study reports."
            )
        elif s_lo > c_hi:
            text += (
                " L-smoothness predicted progress clearly more often than convexity along the "
                "step held (the intervals do not overlap), unlike the reference study."
            )
        else:
            text += " The two intervals overlap: no clear difference between the two analyses."
    return text


def correlation_sentence(correlations: pd.DataFrame | None) -> str:
    """Whether any fitted constant's Spearman correlation with performance is robust."""
    corr = _frame(correlations)
    if corr.empty or not {"rho", "ci_low", "ci_high"} <= set(corr.columns):
        return "No correlation between a fitted constant and performance was computed."
    corr = corr.copy()
    corr["_excl"] = [_excludes_zero(lo, hi) for lo, hi in zip(corr["ci_low"], corr["ci_high"])]
    total = len(corr)

    def describe(r) -> str:
        perf = _PERFORMANCE_NAMES.get(str(r.get("performance")), str(r.get("performance")))
        n = _num(r.get("n"))
        n_txt = f", n = {int(n)}" if math.isfinite(n) else ""
        return (
            f"{r.get('constant')} with {perf} (ρ = {_num(r.get('rho')):.2f} "
            f"[{_num(r.get('ci_low')):.2f}, {_num(r.get('ci_high')):.2f}]{n_txt})"
        )

    robust = corr[corr["_excl"]]
    if robust.empty:
        text = (
            f"None of the {total} Spearman correlation{'s' if total != 1 else ''} between a fitted "
            "constant and a performance measure has a 95% interval that excludes 0"
        )
        rho_abs = pd.to_numeric(corr["rho"], errors="coerce").abs()
        if rho_abs.notna().any():
            text += f"; the strongest is {describe(corr.loc[rho_abs.idxmax()])}"
        text += (
            ". No fitted constant predicts performance robustly, as the reference study reports."
        )
    else:
        order = pd.to_numeric(robust["rho"], errors="coerce").abs().sort_values(ascending=False)
        listed = "; ".join(describe(robust.loc[i]) for i in order.index[:_MAX_LISTED])
        if len(order) > _MAX_LISTED:
            listed += f"; and {len(order) - _MAX_LISTED} more (see the table below)"
        text = (
            f"{len(robust)} of {total} Spearman correlations between a fitted constant and a "
            f"performance measure have a 95% interval that excludes 0: {listed}."
        )
    if "n" in corr.columns:
        n_max = pd.to_numeric(corr["n"], errors="coerce").max()
        if math.isfinite(_num(n_max)) and n_max < 10:
            text += f" With at most {int(n_max)} runs per correlation the intervals are rough."
    return text


def answer_sentences(comparison: pd.DataFrame | None, correlations: pd.DataFrame | None):
    """The report's "answer": one sentence per optimizer, then one on the correlations."""
    comp = _frame(comparison)
    sentences = []
    if comp.empty or "optimizer" not in comp.columns:
        sentences.append("No optimizer comparison was available.")
    else:
        for _, row in comp.iterrows():
            sentences.append(optimizer_sentence(row.to_dict()))
    sentences.append(correlation_sentence(correlations))
    return sentences


# --------------------------------------------------------------------------------------------
# tables


def _comparison_table(comp: pd.DataFrame) -> str:
    if comp.empty or "optimizer" not in comp.columns:
        return '<p class="missing">No optimizer comparison table.</p>'
    measures = [(c, label) for c, label in COMPARISON_MEASURES if c in comp.columns]
    header = ["optimizer", "runs"] + [label for _, label in measures]
    rows = []
    for _, r in comp.iterrows():
        cells = [str(r["optimizer"]), _fmt(r.get("n_runs"))]
        for c, _ in measures:
            cells.append(_pct_interval(r.get(c), r.get(f"{c}_low"), r.get(f"{c}_high")))
        rows.append(cells)
    return _table_html(header, rows)


def _correlation_table(corr: pd.DataFrame) -> str:
    if corr.empty:
        return '<p class="missing">No correlations.</p>'
    corr = corr.copy()
    corr["_abs"] = pd.to_numeric(corr.get("rho", np.nan), errors="coerce").abs()
    corr = corr.sort_values("_abs", ascending=False, na_position="last")
    header = ["constant", "performance", "n", "Spearman ρ", "95% CI", "p-value", "CI excludes 0"]
    rows, classes = [], []
    for _, r in corr.iterrows():
        lo, hi = r.get("ci_low"), r.get("ci_high")
        excl = _excludes_zero(lo, hi)
        rows.append(
            [
                _fmt(r.get("constant")),
                _fmt(r.get("performance")),
                _fmt(r.get("n")),
                _fmt(r.get("rho")),
                f"[{_fmt(lo)}, {_fmt(hi)}]",
                _fmt(r.get("pvalue")),
                "yes" if excl else "no",
            ]
        )
        classes.append("robust" if excl else "")
    return _table_html(header, rows, text_cols=2, row_classes=classes)


def _assumption_labels(verdicts: pd.DataFrame, runs: pd.DataFrame) -> dict[str, str]:
    ids: list[str] = []
    labels: dict[str, str] = {}
    if not verdicts.empty and "assumption" in verdicts.columns:
        ids += [str(a) for a in verdicts["assumption"]]
        if "label" in verdicts.columns:
            for a, lab in zip(verdicts["assumption"], verdicts["label"]):
                if pd.notna(lab) and str(a) not in labels:
                    labels[str(a)] = str(lab)
    ids += [str(c).split(":", 1)[1] for c in runs.columns if str(c).startswith("held:")]
    return {a: labels.get(a, a) for a in _assumption_order(ids)}


def _verdict_matrix(verdicts: pd.DataFrame, runs: pd.DataFrame, labels: dict[str, str]) -> str:
    """Runs × assumptions: fraction held [interval] and held/checked."""
    if not labels:
        return '<p class="missing">No verdicts.</p>'
    run_ids = []
    if "run_id" in runs.columns:
        run_ids += [str(r) for r in runs["run_id"]]
    if "run_id" in verdicts.columns:
        run_ids += [str(r) for r in verdicts["run_id"]]
    order = _run_order(run_ids, runs)
    cells: dict[tuple[str, str], str] = {}
    if {"run_id", "assumption"} <= set(verdicts.columns):
        for _, r in verdicts.iterrows():
            text = _pct_interval(r.get("fraction"), r.get("ci_low"), r.get("ci_high"))
            held, checked = _num(r.get("held")), _num(r.get("checked"))
            if math.isfinite(held) and math.isfinite(checked):
                text += f" ({int(held)}/{int(checked)})"
            cells[(str(r["run_id"]), str(r["assumption"]))] = text
    run_info: dict[str, pd.Series] = {}
    if "run_id" in runs.columns:
        run_info = {str(r["run_id"]): r for _, r in runs.iterrows()}
    for rid, r in run_info.items():  # fall back to the runs table's held:* columns
        for a in labels:
            if (rid, a) not in cells and f"held:{a}" in runs.columns:
                cells[(rid, a)] = _pct(r[f"held:{a}"])
    header = ["run_id", "optimizer", "seed"] + [
        lab if lab == a else f"{lab} ({a})" for a, lab in labels.items()
    ]
    rows = []
    for rid in order:
        info = run_info.get(rid, {})
        rows.append(
            [rid, _fmt(info.get("optimizer")), _fmt(info.get("seed"))]
            + [cells.get((rid, a), "—") for a in labels]
        )
    return _table_html(header, rows, text_cols=2)


def _runs_table(runs: pd.DataFrame) -> str:
    if runs.empty:
        return '<p class="missing">No runs.</p>'
    ordered = runs
    if "run_id" in runs.columns:
        order = _run_order([str(r) for r in runs["run_id"]], runs)
        rank = {r: i for i, r in enumerate(order)}
        ordered = runs.iloc[np.argsort([rank[str(r)] for r in runs["run_id"]], kind="stable")]
    header = [str(c) for c in ordered.columns]
    rows = [[_fmt(v) for v in row] for row in ordered.itertuples(index=False)]
    text_cols = 1 if header and header[0] == "run_id" else 0
    return _table_html(header, rows, text_cols=text_cols)


# --------------------------------------------------------------------------------------------
# the report


def _draw_figures(out: Path, runs, verdicts, correlations, comparison, histories):
    jobs: dict[str, Callable[[Path], Path]] = {
        "optimizer_comparison.png": lambda p: plot_optimizer_comparison(comparison, p),
        "held_fractions.png": lambda p: plot_held_fractions(verdicts, runs, p),
        "trajectories.png": lambda p: plot_trajectories(histories, runs, p),
        "constants_vs_performance.png": lambda p: plot_constant_vs_performance(
            runs, correlations, p
        ),
    }
    failures: dict[str, str] = {}
    for name, job in jobs.items():
        path = out / name
        try:
            job(path)
        except Exception as exc:  # a broken figure must not cost the whole report
            warnings.warn(f"optprobe report: {name} failed: {exc!r}", stacklevel=3)
            failures[name] = f"{type(exc).__name__}: {exc}"
            path.unlink(missing_ok=True)
    return failures


def write_report(
    out_dir: str | Path,
    runs: pd.DataFrame | None,
    verdicts: pd.DataFrame | None,
    correlations: pd.DataFrame | None,
    comparison: pd.DataFrame | None,
    histories: Mapping[str, pd.DataFrame] | None,
    title: str = "optprobe report",
    notes: Iterable[str] = (),
) -> Path:
    """Write the CSVs, the four figures and ``report.html`` into ``out_dir``; return the path of
    ``report.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, verdicts = _frame(runs), _frame(verdicts)
    correlations, comparison = _frame(correlations), _frame(comparison)
    histories = dict(histories or {})

    for name, df in zip(TABLES, (runs, verdicts, correlations, comparison)):
        df.to_csv(out / name, index=False)
    failures = _draw_figures(out, runs, verdicts, correlations, comparison, histories)

    labels = _assumption_labels(verdicts, runs)
    n_runs = len(runs) if not runs.empty else len(histories)
    optimizers = sorted({str(o) for o in runs.get("optimizer", pd.Series(dtype=str)).dropna()})
    constants = [str(c).split(":", 1)[1] for c in runs.columns if str(c).startswith("const:")]

    h: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        '<p class="meta">'
        + escape(
            f"{n_runs} run(s); optimizers: {', '.join(optimizers) or 'n/a'}; "
            f"assumptions: {len(labels)}; fitted constants: {', '.join(constants) or 'none'}."
        )
        + "</p>",
        '<section id="answer">',
        "<h2>The answer</h2>",
        '<div class="answer"><ul>',
    ]
    h += [f"<li>{escape(s)}</li>" for s in answer_sentences(comparison, correlations)]
    h.append("</ul></div>")
    h.append("</section>")

    notes = [str(n) for n in notes]
    if notes:
        h += ['<section id="notes">', "<h2>Notes</h2>", "<ul>"]
        h += [f"<li>{escape(n)}</li>" for n in notes]
        h += ["</ul>", "</section>"]

    for name, (heading, caption) in FIGURES.items():
        anchor = name.removesuffix(".png")
        h += [f'<section id="{escape(anchor)}">', f"<h2>{escape(heading)}</h2>"]
        if (out / name).is_file():
            h += [
                "<figure>",
                f'<img src="{escape(name, quote=True)}" alt="{escape(heading, quote=True)}">',
                f"<figcaption>{escape(caption)}</figcaption>",
                "</figure>",
            ]
        else:
            reason = failures.get(name, "not written")
            h.append(f'<p class="missing">{escape(f"Figure {name} unavailable: {reason}")}</p>')
        h.append("</section>")

    h += [
        '<section id="tables">',
        "<h2>Table: optimizer comparison</h2>",
        _comparison_table(comparison),
    ]
    h += [
        "<h2>Table: fitted constants against performance, sorted by |ρ|</h2>",
        '<p class="small">Spearman rank correlation across runs with a bootstrap 95% interval; '
        "highlighted rows have an interval that excludes 0.</p>",
        _correlation_table(correlations),
    ]
    h += [
        "<h2>Table: per-run verdicts</h2>",
        '<p class="small">Fraction of probed steps on which each assumption held, its confidence '
        "interval and (held/checked) steps.</p>",
        _verdict_matrix(verdicts, runs, labels),
    ]
    if labels:
        h += ["<h3>What “held” means</h3>", "<ul>"]
        for a, lab in labels.items():
            cond = ASSUMPTION_CONDITIONS.get(a, "see the probe documentation")
            h.append(f"<li><b>{escape(lab)}</b> ({escape(a)}): {escape(cond)}</li>")
        h.append("</ul>")
    h += ["<h2>Table: runs</h2>", _runs_table(runs), "</section>"]
    links = " · ".join(f'<a href="{escape(t, quote=True)}">{escape(t)}</a>' for t in TABLES)
    h += [f'<p class="meta">Data: {links}</p>', "</body>", "</html>", ""]

    path = out / "report.html"
    path.write_text("\n".join(h), encoding="utf-8")
    return path
