"""The report's HTML tables and glossary: assumption names and conditions from the registry."""

from __future__ import annotations

import re
from html import escape

import pandas as pd
from synthetic_sweep import make_sweep

from optprobe.analysis.report_tables import (
    ASSUMPTION_CONDITIONS,
    assumption_labels,
    comparison_table,
    correlation_table,
    glossary,
    verdict_matrix,
)
from optprobe.assumptions import ASSUMPTIONS


def test_glossary_entries_are_the_registry_text():
    assert list(ASSUMPTION_CONDITIONS) == list(ASSUMPTIONS)
    items = glossary({a: "ignored" for a in ASSUMPTIONS} | {"mystery": "a made-up check"})
    assert len(items) == len(ASSUMPTIONS) + 1
    for item, a in zip(items, ASSUMPTIONS.values(), strict=False):
        assert all(escape(t) in item for t in (a.id, a.label, a.symbols, a.condition)), item
        assert "ignored" not in item
    assert items[-1] == "<li><b>mystery</b>: a made-up check: see the probe documentation</li>"


def test_labels_come_from_the_registry():
    sw = make_sweep(seeds=(0,), steps=20, constants=("L",))
    verdicts = sw["verdicts"].assign(label="a hand-written label")
    extra = pd.DataFrame({"run_id": ["x"], "assumption": ["mystery"], "label": ["odd"]})
    labels = assumption_labels(pd.concat([verdicts, extra]), sw["runs"])
    assert labels == {a.id: a.label for a in ASSUMPTIONS.values()} | {"mystery": "odd"}
    html = verdict_matrix(sw["verdicts"], sw["runs"], labels)
    for a in ASSUMPTIONS.values():
        assert f"<th>{escape(a.label)} ({a.id})</th>" in html
    body = comparison_table(sw["comparison"]).split("</thead>")[1]
    for a in ASSUMPTIONS.values():
        assert f'<td class="text">{escape(a.label)}</td>' in body


def test_correlation_table_sorted_by_adjusted_p_and_marks_passing_rows():
    corr = make_sweep(seeds=(0, 1, 2, 3, 4, 5), steps=20)["correlations"]
    corr.loc[corr.index[-1], ["pvalue_adjusted", "significant"]] = [0.001, True]
    html = correlation_table(corr)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html.split("</thead>")[1])
    assert len(rows) == len(corr)
    adjusted = [float(re.findall(r"<td>(.*?)</td>", r)[3]) for r in rows]
    assert adjusted == sorted(adjusted) and adjusted[0] == 0.001
    assert html.count('<tr class="robust">') == 1
    assert "Holm-adjusted p" in html.split("</thead>")[0]
