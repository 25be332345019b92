"""One self-contained static HTML report for a sweep of probed runs.

``write_report`` takes the analysis tables and writes, into one folder:

- ``runs.csv``, ``verdicts.csv``, ``correlations.csv``, ``comparison.csv``,
  ``early_prediction.csv`` (the tables as given; the last three always with their header) and
  ``findings.json`` (when given);
- ``held_fractions.png``, ``trajectories.png``, ``constants_vs_performance.png``,
  ``optimizer_comparison.png`` (see :mod:`optprobe.analysis.figures`); ``layers.png`` when
  some history has per-layer keys (``layer/<group>/<key>``), and ``stability.png`` only when
  the runs carry a stability ratio (a learning-rate sweep with the curvature probe,
  :mod:`optprobe.analysis.stability`);
- ``report.html``: inline CSS, no JavaScript, no external resource; images and CSVs are
  referenced by relative file name, so the folder can be moved or archived as a whole.

The words are in :mod:`optprobe.analysis.report_text`, the HTML tables and the glossary in
:mod:`optprobe.analysis.report_tables`.

Table schema (any column may be missing; the report says so instead of failing):

- ``runs``: one row per run: ``run_id``, ``optimizer``, ``model``, ``data``, ``setting``,
  ``seed``, config columns, ``included``, ``exclusion_reason``, ``exclusion_detail``,
  ``final_train_loss``, ``steps_to_target``, ``final_val_loss``, ``final_val_acc``,
  ``held:<key>`` and ``const:<constant>`` columns.
- ``verdicts``: one row per (run, verdict entry): ``run_id``, ``assumption`` (the entry's
  key), ``label``, ``held``, ``checked``, ``fraction``, ``ci_low``, ``ci_high``, ``included``.
- ``correlations``: :data:`optprobe.analysis.correlations.COLUMNS`.
- ``comparison``: :data:`optprobe.analysis.comparison.COLUMNS` (one row per setting ×
  optimizer × verdict entry, run-level).
- ``early_prediction``: the same columns as ``correlations``, for the constants measured in
  the first part of each run against the final loss (:mod:`optprobe.analysis.early`), with
  ``prediction_sentences`` its answer per setting × optimizer.
- ``histories``: run_id -> per-step DataFrame (``step`` and probe keys).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path

import pandas as pd

from optprobe.analysis import comparison as comparison_module
from optprobe.analysis import correlations as correlations_module
from optprobe.analysis.figures import (
    plot_constant_vs_performance,
    plot_held_fractions,
    plot_optimizer_comparison,
    plot_stability,
    plot_trajectories,
)
from optprobe.analysis.figures.comparison import INTERVALS
from optprobe.analysis.figures.constants import PANEL_STATS
from optprobe.analysis.figures.held_fractions import INTERVALS as HELD_INTERVALS
from optprobe.analysis.figures.layers import CAPTION as LAYER_CAPTION
from optprobe.analysis.figures.layers import layer_prefix, plot_layer_heatmap
from optprobe.analysis.report_tables import (
    assumption_labels,
    comparison_table,
    correlation_table,
    excluded_table,
    glossary,
    runs_table,
    verdict_matrix,
)
from optprobe.analysis.report_text import answer_sentences, correlation_sentence, frame
from optprobe.analysis.run_intervals import DESCRIPTION as RUN_INTERVAL
from optprobe.analysis.run_status import REASONS
from optprobe.analysis.stability import DESCRIPTION as STABILITY_RATIO
from optprobe.analysis.stability import has_stability
from optprobe.run.folder import JobFolder

__all__ = ["FIGURES", "OPTIONAL_FIGURES", "TABLES", "write_report"]

#: CSV file names, in the order they are listed in the report.
TABLES: tuple[str, ...] = (
    "runs.csv",
    "verdicts.csv",
    "correlations.csv",
    "comparison.csv",
    "early_prediction.csv",
)
FINDINGS_JSON = "findings.json"
_HEADERS = {
    "correlations.csv": correlations_module.COLUMNS,
    "comparison.csv": comparison_module.COLUMNS,
    "early_prediction.csv": correlations_module.COLUMNS,
}

#: Figure file name -> (section heading, caption).
FIGURES: dict[str, tuple[str, str]] = {
    "optimizer_comparison.png": (
        "Smoothness against convexity, per setting and optimizer",
        "For each setting and optimizer, the mean over its included runs of the fraction of "
        "probed steps on which each deciding entry of the two findings held. Whiskers: "
        f"{INTERVALS}.",
    ),
    "held_fractions.png": (
        "Fraction held, per run and assumption",
        "Fraction of probed steps on which each assumption's headline variant held, one bar "
        "per included run (named by optimizer and seed, coloured by optimizer). Whiskers: "
        f"{HELD_INTERVALS} (interval_method in verdicts.csv). The other variants (L choices, "
        "valid and informative, fresh batch) are in the per-run verdict table below and in "
        "verdicts.csv.",
    ),
    "trajectories.png": (
        "Per-step trajectories",
        "Probe values over training, one line per run; each panel's title says when its "
        "assumption held; green dots mark probed steps where it held, red crosses steps where "
        "it was violated (symmetric-log y axis). No intervals.",
    ),
    "constants_vs_performance.png": (
        "Fitted constants against performance",
        f"The pre-declared fitted constants ({', '.join(correlations_module.CONSTANTS)}, where "
        "measured) against the final training loss: one row of panels per setting and "
        "optimizer, one panel per constant, one point per included run; the other constants "
        f"are in runs.csv. Panel titles: {PANEL_STATS}.",
    ),
}

#: Figures drawn only when the runs have their keys: file name -> (heading, caption).
OPTIONAL_FIGURES: dict[str, tuple[str, str]] = {
    "layers.png": ("Per-layer view of the step", LAYER_CAPTION),
    "stability.png": (
        "Fraction held against the edge of stability",
        "One panel per headline assumption (rows) and optimizer (columns), one point per "
        f"included run: x = the median over its curvature-probe firings of the {STABILITY_RATIO}"
        " (log axis; horizontal whiskers: the quartiles over the firings), y = the fraction of "
        f"probed steps on which the assumption held (vertical whiskers: {HELD_INTERVALS}). "
        "Dotted line: ratio 1. Runs whose optimizer has no stability threshold are left out, "
        "with the reason under the figure and in runs.csv (stability:excluded).",
    ),
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


def _draw_figures(out: Path, runs, verdicts, correlations, comparison, histories):
    """Draw the figures into ``out`` (an optional one only when its keys are there; a stale
    copy is removed otherwise); return file name -> why it failed, for failures."""
    jobs: dict[str, Callable[[Path], Path]] = {
        "optimizer_comparison.png": lambda p: plot_optimizer_comparison(comparison, p),
        "held_fractions.png": lambda p: plot_held_fractions(verdicts, runs, p),
        "trajectories.png": lambda p: plot_trajectories(histories, runs, p),
        "constants_vs_performance.png": lambda p: plot_constant_vs_performance(
            runs, correlations, p
        ),
    }
    optional = _optional_figures(histories, runs)
    if "layers.png" in optional:
        jobs["layers.png"] = lambda p: plot_layer_heatmap(histories, runs, p)
    if "stability.png" in optional:
        jobs["stability.png"] = lambda p: plot_stability(verdicts, runs, p)
    for name in OPTIONAL_FIGURES.keys() - jobs.keys():
        (out / name).unlink(missing_ok=True)
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


def _optional_figures(histories: Mapping, runs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """The entries of ``OPTIONAL_FIGURES`` whose keys the runs have: per-layer keys in some
    history (``layers.png``), a stability ratio in runs.csv (``stability.png``)."""
    has = {
        "layers.png": any(
            layer_prefix(h) for h in histories.values() if isinstance(h, pd.DataFrame)
        ),
        "stability.png": has_stability(runs),
    }
    return {name: entry for name, entry in OPTIONAL_FIGURES.items() if has[name]}


def _included(runs: pd.DataFrame, verdicts: pd.DataFrame, histories: dict):
    """The runs, verdicts and histories of the included runs."""
    if runs.empty or not {"included", "run_id"} <= set(runs.columns):
        return runs, verdicts, histories
    keep = runs[runs["included"].astype(bool)]
    ids = {str(r) for r in keep["run_id"]}
    if "run_id" in verdicts.columns:
        verdicts = verdicts[verdicts["run_id"].astype(str).isin(ids)]
    return keep, verdicts, {k: v for k, v in histories.items() if str(k) in ids}


def _head(title: str, meta: str) -> list[str]:
    return [
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
        f'<p class="meta">{escape(meta)}</p>',
    ]


def _list_section(anchor: str, heading: str, items: Iterable[str], css: str = "") -> list[str]:
    """A section with a heading and a bulleted list of ``items`` (escaped)."""
    ul = [f"<li>{escape(i)}</li>" for i in items]
    ul = [f'<div class="{css}"><ul>', *ul, "</ul></div>"] if css else ["<ul>", *ul, "</ul>"]
    return [f'<section id="{anchor}">', f"<h2>{escape(heading)}</h2>", *ul, "</section>"]


def _figure_sections(out: Path, failures: Mapping[str, str], optional: Mapping) -> list[str]:
    h: list[str] = []
    for name, (heading, caption) in {**FIGURES, **optional}.items():
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
    return h


def _table_sections(runs, verdicts, correlations, comparison, labels) -> list[str]:
    h = [
        '<section id="tables">',
        "<h2>Table: run-level comparison</h2>",
        f'<p class="small">Mean of run fractions: each included run counts once; interval: '
        f"{escape(comparison_module.INTERVAL)}; pooled steps are shown for reference and are "
        "not an interval (steps are autocorrelated). “Held on most steps?”: "
        f"{escape(', '.join(comparison_module.LABELS))} (the interval above, below or across "
        f"{comparison_module.THRESHOLD:.0%}; fewer than {comparison_module.MIN_RUNS} runs).</p>",
        comparison_table(comparison),
        "<h2>Table: fitted constants against performance, within optimizer</h2>",
        f'<p class="small">{escape(correlation_sentence(correlations))} Correction: '
        f"{escape(correlations_module.CORRECTION)} over every test of this table.</p>",
        correlation_table(correlations),
        "<h2>Table: per-run verdicts</h2>",
        '<p class="small">Fraction of probed steps on which each verdict held, '
        f"[the run's own {escape(RUN_INTERVAL)}] and (held/checked) steps.</p>",
        verdict_matrix(verdicts, runs, labels),
    ]
    if labels:
        h += ["<h3>What “held” means</h3>", '<ul id="glossary">', *glossary(labels), "</ul>"]
    h += ["<h2>Table: runs</h2>", runs_table(runs), "</section>"]
    return h


def _early_section(early: pd.DataFrame, sentences: Iterable[str]) -> list[str]:
    return [
        '<section id="early">',
        "<h2>Table: constants measured early against the final loss, within optimizer</h2>",
        '<p class="small">The pre-declared constants computed on the probed steps of the first '
        "part of each run only, Spearman ρ with the final training loss, permutation p, "
        f"{escape(correlations_module.CORRECTION)} over every test of this table.</p>",
        "<ul>",
        *(f"<li>{escape(s)}</li>" for s in sentences),
        "</ul>",
        correlation_table(early),
        "</section>",
    ]


def _excluded_section(runs: pd.DataFrame) -> list[str]:
    legend = "; ".join(f"{k}: {v}" for k, v in REASONS.items())
    return [
        '<section id="excluded">',
        "<h2>Excluded runs</h2>",
        '<p class="small">Listed here and in runs.csv; they enter no comparison, finding or '
        f"correlation. Reasons: {escape(legend)}.</p>",
        excluded_table(runs),
        "</section>",
    ]


def write_report(
    out_dir: str | Path,
    runs: pd.DataFrame | None,
    verdicts: pd.DataFrame | None,
    correlations: pd.DataFrame | None,
    comparison: pd.DataFrame | None,
    histories: Mapping[str, pd.DataFrame] | None,
    title: str = "optprobe report",
    notes: Iterable[str] = (),
    findings: Mapping | None = None,
    early_prediction: pd.DataFrame | None = None,
    prediction_sentences: Iterable[str] = (),
) -> Path:
    """Write the CSVs (``early_prediction.csv`` from ``early_prediction``, its answer
    ``prediction_sentences`` in the report), ``findings.json`` (when ``findings`` is given),
    the figures and
    ``report.html`` into ``out_dir``; return the path of ``report.html``. Figures show the
    included runs only (runs without an ``included`` column count as included)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, verdicts = frame(runs), frame(verdicts)
    correlations, comparison = frame(correlations), frame(comparison)
    histories = dict(histories or {})

    early = frame(early_prediction)
    for name, df in zip(TABLES, (runs, verdicts, correlations, comparison, early)):
        if df.empty and name in _HEADERS:  # the header, whatever the empty table held
            df = pd.DataFrame(columns=list(dict.fromkeys([*_HEADERS[name], *df.columns])))
        df.to_csv(out / name, index=False)
    if findings is not None:
        JobFolder.write_json(out / FINDINGS_JSON, dict(findings))
    used, used_verdicts, used_histories = _included(runs, verdicts, histories)
    failures = _draw_figures(out, used, used_verdicts, correlations, comparison, used_histories)

    labels = assumption_labels(verdicts, runs)
    optimizers = sorted({str(o) for o in runs.get("optimizer", pd.Series(dtype=str)).dropna()})
    constants = [str(c).split(":", 1)[1] for c in runs.columns if str(c).startswith("const:")]
    meta = (
        f"{len(runs) if not runs.empty else len(histories)} run(s); "
        f"optimizers: {', '.join(optimizers) or 'n/a'}; assumptions: {len(labels)}; "
        f"fitted constants: {', '.join(constants) or 'none'}."
    )
    h = _head(title, meta)
    h += _list_section(
        "answer", "The answer", answer_sentences(comparison, correlations), css="answer"
    )
    notes = [str(n) for n in notes]
    if notes:
        h += _list_section("notes", "Notes", notes)
    if "included" in runs.columns:
        h += _excluded_section(runs)
    h += _figure_sections(out, failures, _optional_figures(used_histories, used))
    h += _table_sections(runs, verdicts, correlations, comparison, labels)
    h += _early_section(early, [str(s) for s in prediction_sentences])
    files = [*TABLES, *([FINDINGS_JSON] if findings is not None else [])]
    links = " · ".join(f'<a href="{escape(t, quote=True)}">{escape(t)}</a>' for t in files)
    h += [f'<p class="meta">Data: {links}</p>', "</body>", "</html>", ""]

    path = out / "report.html"
    path.write_text("\n".join(h), encoding="utf-8")
    return path
