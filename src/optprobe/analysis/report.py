"""One self-contained static HTML report for a sweep of probed runs.

``write_report`` takes the analysis tables and writes, into one folder:

- ``runs.csv``, ``verdicts.csv``, ``correlations.csv``, ``comparison.csv`` (the tables as given);
- ``held_fractions.png``, ``trajectories.png``, ``constants_vs_performance.png``,
  ``optimizer_comparison.png`` (see :mod:`optprobe.analysis.figures`);
- ``report.html``: inline CSS, no JavaScript, no external resource; images and CSVs are
  referenced by relative file name, so the folder can be moved or archived as a whole.

The words are in :mod:`optprobe.analysis.report_text`, the HTML tables and the glossary in
:mod:`optprobe.analysis.report_tables`.

Table schema (any column may be missing; the report says so instead of failing):

- ``runs``: one row per run: ``run_id``, ``optimizer``, ``model``, ``data``, ``seed``, config
  columns, ``final_train_loss``, ``steps_to_target``, ``final_val_loss``, ``final_val_acc``,
  ``held:<assumption>`` and ``const:<constant>`` columns.
- ``verdicts``: one row per (run, assumption): ``run_id``, ``assumption``, ``label``, ``held``,
  ``checked``, ``fraction``, ``ci_low``, ``ci_high``.
- ``correlations``: one row per (constant, performance): ``constant``, ``performance``, ``n``,
  ``rho``, ``ci_low``, ``ci_high``, ``pvalue``.
- ``comparison``: one row per optimizer: ``optimizer``, ``n_runs`` and, each with ``_low`` and
  ``_high``, the columns of :data:`optprobe.analysis.sweep.COMPARED`.
- ``histories``: run_id -> per-step DataFrame (``step`` and probe keys).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path

import pandas as pd

from optprobe.analysis.figures import (
    plot_constant_vs_performance,
    plot_held_fractions,
    plot_optimizer_comparison,
    plot_trajectories,
)
from optprobe.analysis.figures.comparison import COMPARISON_MEASURES, INTERVALS
from optprobe.analysis.report_tables import (
    assumption_labels,
    comparison_table,
    correlation_table,
    glossary,
    runs_table,
    verdict_matrix,
)
from optprobe.analysis.report_text import answer_sentences, frame

__all__ = ["FIGURES", "TABLES", "write_report"]

#: CSV file names, in the order they are listed in the report.
TABLES: tuple[str, ...] = ("runs.csv", "verdicts.csv", "correlations.csv", "comparison.csv")

#: Figure file name -> (section heading, caption).
FIGURES: dict[str, tuple[str, str]] = {
    "optimizer_comparison.png": (
        "Smoothness against convexity, per optimizer",
        "For each optimizer, the fraction of its probed steps (pooled over its runs) on which: "
        + "; ".join(label for _, label in COMPARISON_MEASURES)
        + f". Whiskers are {INTERVALS}, not a spread over runs.",
    ),
    "held_fractions.png": (
        "Fraction held, per run and assumption",
        "Fraction of probed steps on which each assumption held, one bar per run (coloured by "
        "optimizer), with its 95% Wilson interval over the run's probed steps.",
    ),
    "trajectories.png": (
        "Per-step trajectories",
        "Probe values over training, one line per run; each panel's title says when its "
        "assumption held; green dots mark probed steps where it held, red crosses steps where "
        "it was violated (symmetric-log y axis).",
    ),
    "constants_vs_performance.png": (
        "Fitted constants against performance",
        "Each fitted constant against the final training loss, one point per run, with Spearman's "
        "rank correlation and its bootstrap 95% interval.",
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
    """Draw the four figures into ``out``; return file name -> why it failed, for failures."""
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


def _figure_sections(out: Path, failures: Mapping[str, str]) -> list[str]:
    h: list[str] = []
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
    return h


def _table_sections(runs, verdicts, correlations, comparison, labels) -> list[str]:
    h = [
        '<section id="tables">',
        "<h2>Table: optimizer comparison</h2>",
        f'<p class="small">In brackets: {escape(INTERVALS)}.</p>',
        comparison_table(comparison),
        "<h2>Table: fitted constants against performance, sorted by |ρ|</h2>",
        '<p class="small">Spearman rank correlation across runs with a bootstrap 95% interval; '
        "highlighted rows have an interval that excludes 0.</p>",
        correlation_table(correlations),
        "<h2>Table: per-run verdicts</h2>",
        '<p class="small">Fraction of probed steps on which each assumption held, its 95% '
        "Wilson interval over the run's probed steps and (held/checked) steps.</p>",
        verdict_matrix(verdicts, runs, labels),
    ]
    if labels:
        h += ["<h3>What “held” means</h3>", '<ul id="glossary">', *glossary(labels), "</ul>"]
    h += ["<h2>Table: runs</h2>", runs_table(runs), "</section>"]
    return h


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
    runs, verdicts = frame(runs), frame(verdicts)
    correlations, comparison = frame(correlations), frame(comparison)
    histories = dict(histories or {})

    for name, df in zip(TABLES, (runs, verdicts, correlations, comparison)):
        df.to_csv(out / name, index=False)
    failures = _draw_figures(out, runs, verdicts, correlations, comparison, histories)

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
    h += _figure_sections(out, failures)
    h += _table_sections(runs, verdicts, correlations, comparison, labels)
    links = " · ".join(f'<a href="{escape(t, quote=True)}">{escape(t)}</a>' for t in TABLES)
    h += [f'<p class="meta">Data: {links}</p>', "</body>", "</html>", ""]

    path = out / "report.html"
    path.write_text("\n".join(h), encoding="utf-8")
    return path
