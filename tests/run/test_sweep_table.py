"""The job and sweep table shows one headline verdict per assumption and says where the rest
are."""

from __future__ import annotations

from optprobe.assumptions import ASSUMPTIONS, all_variants
from optprobe.run.folder import JobFolder
from optprobe.run.sweep_table import (
    HELD_NOTE,
    format_table,
    headline_entries,
    job_row,
    not_judged,
    table_columns,
)


def entry(verdict_id: str, fraction: float, headline: bool = True) -> dict:
    return {
        "id": verdict_id,
        "assumption": verdict_id.split(":")[0],
        "fraction": fraction,
        "headline": headline,
    }


def test_one_headline_column_per_assumption(tmp_path):
    entries = [
        entry("inst_gap:valid:same_batch", 0.9),
        entry("inst_gap:valid_informative:same_batch", 0.5, headline=False),
        entry("inst_gap:valid:fresh_batch", 0.8),
        entry("descent_bound:path:fresh_batch", 0.3),  # only the fresh scheme ran
        entry("descent_bound:past:fresh_batch", 0.6, headline=False),
        {"assumption": "ref_gap", "fraction": 1.0},  # written before variants existed
    ]
    assert [a.get("id", "ref_gap") for a in headline_entries(entries)] == [
        "inst_gap:valid:same_batch",
        "descent_bound:path:fresh_batch",
        "ref_gap",
    ]
    JobFolder(tmp_path).write_summary(
        {"status": "completed", "overrides": ["x=1"], "verdicts": {"assumptions": entries}}
    )
    row = job_row(tmp_path)
    held = {k: v for k, v in row.items() if k.startswith("held:")}
    assert held == {
        "held:inst_gap:valid:same_batch": 0.9,
        "held:descent_bound:path:fresh_batch": 0.3,
        "held:ref_gap": 1.0,
    }
    table = format_table([row])
    assert HELD_NOTE in table and "verdicts.json" in HELD_NOTE
    assert HELD_NOTE not in format_table([{"job": "1", "status": "missing"}])


def test_columns_follow_the_registry_and_the_rest_are_named():
    """Every headline verdict the registry defines, written in reverse: the table shows one
    column per assumption in registry order; a job without some assumptions names them."""
    headline = [v for v in all_variants() if v.headline and v.get("scheme") != "fresh_batch"]
    entries = [
        {"id": v.id, "assumption": v.assumption.id, "fraction": 0.5, "headline": True}
        for v in reversed(headline)
    ]
    row = {"job": "0", **{f"held:{e['id']}": 0.5 for e in headline_entries(entries)}}
    columns = table_columns([row])
    held = [c.removeprefix("held:") for c in columns if c.startswith("held:")]
    assert [h.split(":")[0] for h in held] == list(ASSUMPTIONS)
    assert not_judged(columns) == ""
    without = {k: v for k, v in row.items() if not k.startswith("held:ref_gap")}
    table = format_table([without])
    assert table.splitlines()[-1] == not_judged(table_columns([without]))
    assert "ref_gap (ref/gap)" in table.splitlines()[-1]
