"""``write_report``: the files it writes and the HTML page, on synthetic sweep tables."""

from __future__ import annotations

import re
import shutil
from html import escape

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import (
    CONSTANTS,
    check_html,
    check_png,
    check_self_contained,
    make_sweep,
)

from optprobe.analysis.correlations import COLUMNS as CORR_COLUMNS
from optprobe.analysis.correlations import CONSTANTS as PREDECLARED
from optprobe.analysis.report import FIGURES, TABLES, write_report
from optprobe.analysis.report_text import answer_sentences
from optprobe.analysis.run_intervals import METHOD as RUN_METHOD
from optprobe.assumptions import ASSUMPTIONS


@pytest.fixture(scope="module")
def sweep():
    return make_sweep()


@pytest.fixture(scope="module")
def full_report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(
        out,
        **sweep,
        title="CIFAR-10 sweep <SGDM vs AdamW>",
        notes=["replay matched the reference run for 6/6 runs", "x < y & z"],
    )
    return path


def test_report_writes_every_file(full_report):
    out = full_report.parent
    assert full_report.name == "report.html" and full_report.is_file()
    for name in TABLES:
        assert (out / name).is_file(), name
    for name in FIGURES:
        check_png(out / name)
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 and "const:L" in runs.columns
    assert len(pd.read_csv(out / "verdicts.csv")) == 6 * 7


def test_report_html_content(full_report, sweep):
    html = full_report.read_text(encoding="utf-8")
    parser = check_html(full_report)
    check_self_contained(parser, html)
    for run_id in sweep["runs"]["run_id"]:
        assert escape(run_id) in html, run_id
    for label in sweep["verdicts"]["label"].unique():
        assert escape(label) in html, label
    for c in CONSTANTS:  # correlated only when pre-declared
        assert f"const:{c}" in html, c
        assert (f'<td class="text">{c}</td>' in html) == (c in PREDECLARED), c
    for sentence in answer_sentences(sweep["comparison"], sweep["correlations"]):
        assert escape(sentence) in html, sentence
    assert "resnet18/cifar10, SGDM: mean over runs of the fraction" in html
    assert "resnet18/cifar10, AdamW: " in html
    assert escape("convex towards x*: ") in html
    assert "Spearman correlations within each setting and optimizer" in html
    srcs = {a["src"] for t, a in parser.tags if t == "img"}
    assert srcs == set(FIGURES)
    # title and notes escaped, notes listed
    assert "<title>CIFAR-10 sweep &lt;SGDM vs AdamW&gt;</title>" in html
    assert "<li>x &lt; y &amp; z</li>" in html
    assert "replay matched the reference run for 6/6 runs" in html
    # section order: answer, comparison figure, held fractions, trajectories, scatter, tables
    order = [
        'id="answer"',
        'src="optimizer_comparison.png"',
        'src="held_fractions.png"',
        'src="trajectories.png"',
        'src="constants_vs_performance.png"',
        "<h2>Table: run-level comparison</h2>",
        "<h2>Table: fitted constants",
        "<h2>Table: per-run verdicts</h2>",
        "<h2>Table: runs</h2>",
    ]
    positions = [html.index(s) for s in order]
    assert positions == sorted(positions)


def test_glossary_has_the_registry_text_of_every_assumption(full_report):
    """One glossary entry per registry assumption, with the registry's label, symbols and
    condition: a condition written by hand anywhere else would not match."""
    html = full_report.read_text(encoding="utf-8")
    glossary = html[html.index('<ul id="glossary">') :]
    items = re.findall(r"<li>(.*?)</li>", glossary[: glossary.index("</ul>")])
    assert len(items) == len(ASSUMPTIONS)
    for item, a in zip(items, ASSUMPTIONS.values(), strict=True):
        assert f"<b>{escape(a.id)}</b>" in item
        for text in (a.label, a.symbols, a.condition):
            assert escape(text) in item, (a.id, text)
    assert escape(ASSUMPTIONS["bounded_variance"].symbols) in glossary
    assert "σ²" in ASSUMPTIONS["bounded_variance"].symbols and "tr Σ ≤ σ0²" not in html


def test_captions_say_what_the_intervals_are(full_report):
    """Run-level intervals are called so; a pooled fraction is never captioned as an interval
    "over runs"."""
    html = full_report.read_text(encoding="utf-8")
    caption = escape(FIGURES["optimizer_comparison.png"][1])
    assert caption in html
    assert "t interval over runs" in caption and "Wilson" not in caption
    assert "pooled fraction of steps, no interval" in caption
    table = html[html.index("<h2>Table: run-level comparison</h2>") :]
    words = table[: table.index("<table>")]
    assert "t interval over runs" in words and "pooled steps are shown for reference" in words
    header = table[table.index("<thead>") : table.index("</thead>")]
    assert "95% t interval over runs" in header and "pooled steps (held/checked)" in header
    comparison_section = html.split('id="optimizer_comparison"')[1].split("</section>")[0]
    assert "Wilson" not in comparison_section and "Wilson" not in html.split('id="answer"')[0]
    # per run: the Wilson interval at the long-memory effective sample size, said in full
    held = escape(FIGURES["held_fractions.png"][1])
    verdict_note = table[table.index("<h2>Table: per-run verdicts</h2>") :].split("</p>")[0]
    for words in (held, verdict_note):
        assert "95% Wilson interval at the run&#x27;s effective sample size" in words
        assert escape("(n − W)/τ + 1") in words
        assert "integrated autocorrelation time" in words
        assert RUN_METHOD in words
    # figures without intervals say so, and what their numbers are
    assert "No intervals." in FIGURES["trajectories.png"][1]
    constants = FIGURES["constants_vs_performance.png"][1]
    assert "no interval is drawn" in constants and "Holm-adjusted" in constants
    assert "one row of panels per setting and optimizer" in constants


@pytest.mark.parametrize(
    "table", [None, pd.DataFrame(), pd.DataFrame(index=[0, 1]), pd.DataFrame(columns=["rho"])]
)
def test_correlations_csv_always_has_its_header(tmp_path, table):
    """A small sweep computes no correlation: correlations.csv still has its header."""
    sw = make_sweep(seeds=(0, 1), steps=10, constants=("L0",))
    assert sw["correlations"].empty
    write_report(tmp_path, sw["runs"], sw["verdicts"], table, sw["comparison"], {})
    text = (tmp_path / "correlations.csv").read_text()
    assert text.splitlines()[0].split(",")[: len(CORR_COLUMNS)] == list(CORR_COLUMNS)


def test_report_lists_excluded_runs(tmp_path):
    sw = make_sweep(seeds=(0, 1), steps=20, constants=("L",))
    runs = sw["runs"].copy()
    runs.loc[0, ["included", "exclusion_reason"]] = [False, "diverged"]
    path = write_report(tmp_path, runs, sw["verdicts"], None, sw["comparison"], sw["histories"])
    html = path.read_text(encoding="utf-8")
    section = html[
        html.index('id="excluded"') : html.index("</section>", html.index('id="excluded"'))
    ]
    assert runs.loc[0, "run_id"] in section and "diverged" in section
    assert runs.loc[1, "run_id"] not in section
    assert "no: diverged" in html  # the verdict matrix says the run is not used
    assert pd.read_csv(tmp_path / "correlations.csv").columns.tolist() == list(CORR_COLUMNS)


# --------------------------------------------------------------------------------------------
# missing data


def test_report_without_reference_probe(tmp_path):
    sw = make_sweep(with_ref=False, seeds=(0, 1), steps=60, seed=1, constants=("L", "sigma0"))
    assert "ref_gap" not in set(sw["comparison"]["assumption"])
    assert "held:ref_gap" not in sw["runs"].columns
    path = write_report(tmp_path, **sw)
    html = path.read_text(encoding="utf-8")
    check_html(path)
    for name in FIGURES:
        check_png(tmp_path / name)
        assert f'src="{name}"' in html
    assert escape("convex towards x*: ") not in html
    for run_id in sw["runs"]["run_id"]:
        assert run_id in html


def test_report_single_run(tmp_path):
    sw = make_sweep(optimizers=("sgdm",), seeds=(0,), steps=40, seed=2, constants=("L",))
    sw["correlations"] = sw["correlations"].iloc[0:0]
    path = write_report(tmp_path, **sw)
    html = path.read_text(encoding="utf-8")
    check_html(path)
    assert "sgdm-resnet18-s0" in html
    assert "resnet18/cifar10, SGDM: " in html and "insufficient runs; pooled steps" in html
    assert "none computed" in html
    for name in FIGURES:
        assert (tmp_path / name).is_file(), name
        assert f'src="{name}"' in html


def test_report_with_nothing(tmp_path):
    path = write_report(tmp_path / "empty", None, pd.DataFrame(), None, None, {}, notes=["n"])
    html = path.read_text(encoding="utf-8")
    check_html(path)
    for name in TABLES:
        assert (path.parent / name).is_file()
    for name in FIGURES:
        assert (path.parent / name).is_file()
        assert f'src="{name}"' in html
        assert mpimg.imread(path.parent / name).ndim == 3
    assert "No optimizer comparison was available." in html
    # the interface files keep their header when empty
    corr = pd.read_csv(path.parent / "correlations.csv")
    assert corr.empty and corr.columns.tolist() == list(CORR_COLUMNS)
    comp = pd.read_csv(path.parent / "comparison.csv")
    assert comp.empty and {"mean_run_fraction", "ci_low", "pooled_fraction"} <= set(comp.columns)


def test_report_with_partial_columns(tmp_path):
    """Odd inputs: verdicts without intervals, runs without optimizer or constants, histories
    missing most keys, a run known only to the histories, hostile run ids."""
    sw = make_sweep(seeds=(0,), steps=30, seed=3, constants=("L",))
    runs = sw["runs"].drop(columns=[c for c in sw["runs"].columns if c.startswith("const:")])
    runs = runs.drop(columns=["optimizer"])
    runs.loc[0, "run_id"] = "<b>&run"
    verdicts = sw["verdicts"].drop(columns=["ci_low", "ci_high", "label"])
    verdicts.loc[verdicts["run_id"] == "sgdm-resnet18-s0", "run_id"] = "<b>&run"
    histories = {
        "<b>&run": sw["histories"]["sgdm-resnet18-s0"][["step", "step/inst_gap"]],
        "orphan": pd.DataFrame({"step": [0, 1, 2], "step/loss_change": [-1.0, np.nan, 0.5]}),
        "empty": pd.DataFrame(),
    }
    path = write_report(tmp_path, runs, verdicts, None, sw["comparison"], histories)
    html = path.read_text(encoding="utf-8")
    check_html(path)
    assert "&lt;b&gt;&amp;run" in html and "<b>&run" not in html
    for name in FIGURES:
        assert (tmp_path / name).is_file()


# --------------------------------------------------------------------------------------------
# rendering in a real browser (Playwright driving Chromium: its own build where
# `python -m playwright install chromium` fetched it, else the system's chromium)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    with sync_api.sync_playwright() as pw:
        try:
            launched = pw.chromium.launch()
        except sync_api.Error:
            exe = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
            if exe is None:
                pytest.skip("no Chromium: python -m playwright install chromium (or apt chromium)")
            launched = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield launched
        launched.close()


def browser_problems(browser, report) -> tuple[list[str], str]:
    """Open ``report`` in the browser: (what went wrong, the answer section's text). Wrong:
    console errors, page errors, failed requests, images that did not load."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)  # fmt: skip
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(report.resolve().as_uri(), wait_until="load")
    images = page.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
    )
    problems += [f"image {src} did not load" for src, width in images if not width > 0]
    answer = page.inner_text("#answer")
    page.close()
    return problems, answer


def test_report_renders_in_chromium(browser, full_report, sweep, tmp_path):
    """Every figure loads, nothing fails, the answer names each optimizer; a broken copy of
    the report (one figure missing) is caught."""
    problems, answer = browser_problems(browser, full_report)
    assert problems == []
    for optimizer in sweep["runs"]["optimizer"].unique():
        assert optimizer.lower() in answer.lower(), (optimizer, answer)
    broken = tmp_path / "broken"
    shutil.copytree(full_report.parent, broken)
    (broken / "held_fractions.png").unlink()
    problems, _ = browser_problems(browser, broken / "report.html")
    assert "image held_fractions.png did not load" in problems
