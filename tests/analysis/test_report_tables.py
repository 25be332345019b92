"""The report's HTML tables and glossary: assumption names and conditions from the registry."""

from __future__ import annotations

import re
from html import escape

import numpy as np
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
from optprobe.analysis.sweep import COMPARED
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
    header = comparison_table(sw["comparison"]).split("</thead>")[0]
    for assumption in COMPARED.values():
        assert f"<th>{escape(ASSUMPTIONS[assumption].label)}</th>" in header


def test_correlation_table_sorted_by_abs_rho():
    corr = make_sweep(seeds=(0, 1, 2), steps=20)["correlations"]
    html = correlation_table(corr)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html.split("</thead>")[1])
    rhos = [float(re.findall(r"<td>(.*?)</td>", r)[1]) for r in rows]
    assert len(rhos) == len(corr)
    assert np.all(np.diff(np.abs(rhos)) <= 1e-3)
    robust = corr[(corr["ci_low"] > 0) | (corr["ci_high"] < 0)]
    assert html.count('<tr class="robust">') == len(robust)
