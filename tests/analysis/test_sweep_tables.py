"""The sweep's markdown summary: the run-level comparison, labelled by the registry."""

from __future__ import annotations

from synthetic_sweep import make_sweep

from optprobe.analysis.sweep import SweepTables, markdown_summary
from optprobe.assumptions import ASSUMPTIONS


def test_markdown_summary_rows_from_the_run_level_comparison():
    sw = make_sweep(seeds=(0, 1), steps=20, constants=("L",))
    tables = SweepTables(**{**sw, "correlations": sw["correlations"].iloc[0:0]})
    lines = markdown_summary(tables).splitlines()
    assert "95% t interval over runs" in lines[0]
    header = lines[2]
    assert "mean of run fractions" in header and "95% interval over runs" in header
    sgdm = [line for line in lines if line.startswith("| resnet18/cifar10 | sgdm | ")]
    assert [line.split(" | ")[2] for line in sgdm] == [a.label for a in ASSUMPTIONS.values()]
    # two runs: below the minimum, so every label says so
    assert all(line.endswith("| insufficient runs |") for line in sgdm)
