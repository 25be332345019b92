"""One row per job of a sweep: overrides, status, final metrics, verdicts, folder (printed and as CSV)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from optprobe.assumptions import ASSUMPTIONS, verdict_rank
from optprobe.run.folder import SWEEP_SUMMARY, JobFolder

COLUMNS = ("job", "overrides", "status", "train/loss", "val/acc", "wall_s", "folder")


def headline_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``verdicts.json`` entry per assumption: its first headline variant (L = path, valid;
    the same-batch scheme when it ran). Entries written before variants count as headlines."""
    seen: set[str] = set()
    out = []
    for a in entries:
        if a.get("headline", True) and a["assumption"] not in seen:
            seen.add(a["assumption"])
            out.append(a)
    return out


def job_row(job_dir: Path) -> dict[str, Any]:
    """The summary row of one job folder (status 'missing' when it has no summary.json)."""
    summary = JobFolder(job_dir).read_summary()
    if summary is None:
        return {"job": job_dir.name, "status": "missing", "folder": str(job_dir)}
    metrics = summary.get("metrics", {})
    held = {}
    for a in headline_entries((summary.get("verdicts") or {}).get("assumptions", [])):
        held[f"held:{a.get('id', a['assumption'])}"] = a["fraction"]
    return {
        **held,
        "job": job_dir.name,
        "overrides": " ".join(summary.get("overrides", [])) or "(defaults)",
        "status": summary.get("status", "?"),
        "train/loss": metrics.get("train/loss"),
        "val/acc": metrics.get("val/acc"),
        "wall_s": summary.get("wall_time_total_s", summary.get("wall_time_s")),  # every segment
        "folder": str(job_dir),
        "error": summary.get("error"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


HELD_NOTE = (
    "held:<id>: fraction of scored probed steps on which each assumption's headline variant "
    "held (L = path, valid, same batch); every variant (the other L choices, valid and "
    "informative, the fresh-batch scheme) with its per-run interval and summed version: "
    "<folder>/verdicts.json"
)


def table_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The fixed columns plus one ``held:<id>`` column per headline verdict judged
    (``headline_entries``), in the registry's order of assumptions."""
    held = {k for r in rows for k in r if k.startswith("held:")}
    held = sorted(held, key=lambda k: verdict_rank(k.removeprefix("held:")))
    return (*COLUMNS[:-1], *held, COLUMNS[-1])


def not_judged(columns: tuple[str, ...]) -> str:
    """The registry's assumptions without a ``held:`` column, and the keys they need, or ''."""
    judged = {c.removeprefix("held:").split(":", 1)[0] for c in columns if c.startswith("held:")}
    missing = [a for a in ASSUMPTIONS.values() if a.id not in judged]
    if not missing:
        return ""
    return "not judged in these jobs (their keys were not logged): " + "; ".join(
        f"{a.id} ({', '.join(a.keys)})" for a in missing
    )


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """A plain-text table (fixed-width columns) of ``rows``; errors are listed below it.

    ``held:<id>`` columns give the fraction of scored probed steps on which that headline
    variant held (``HELD_NOTE``, printed under the table when there are such columns).
    """
    columns = columns or table_columns(rows)
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    if any(c.startswith("held:") for c in columns):
        out += [HELD_NOTE, not_judged(columns)] if not_judged(columns) else [HELD_NOTE]
    out += [f"{r['job']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep (those holding a summary.json or Hydra's .hydra), in job order."""
    found = [p for p in sweep_dir.iterdir() if JobFolder(p).is_job()]
    return sorted(
        found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``<sweep>/sweep_summary.csv`` and return its rows."""
    sweep_dir = Path(sweep_dir)
    rows = [job_row(p) for p in job_dirs(sweep_dir)]
    with open(sweep_dir / SWEEP_SUMMARY, "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=[*table_columns(rows), "error"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    return rows
