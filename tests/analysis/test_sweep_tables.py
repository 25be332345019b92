"""The sweep's markdown summary names the compared assumptions by the registry's labels."""

from __future__ import annotations

from synthetic_sweep import make_sweep

from optprobe.analysis.sweep import COMPARED, SweepTables, markdown_summary
from optprobe.assumptions import ASSUMPTIONS


def test_markdown_summary_header_from_the_registry():
    sw = make_sweep(seeds=(0, 1), steps=20, constants=("L",))
    tables = SweepTables(**{**sw, "correlations": sw["correlations"].iloc[0:0]})
    lines = markdown_summary(tables).splitlines()
    labels = [ASSUMPTIONS[a].label for a in COMPARED.values()]
    assert lines[0] == "| " + " | ".join(["setting: optimizer", "runs", *labels]) + " |"
    assert lines[1] == "|---" * (2 + len(labels)) + "|"
    assert any(line.startswith("| sgdm | 2 | ") for line in lines)
