"""One row per job of a sweep: overrides, status, final metrics, verdicts, folder (printed and as CSV)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from optprobe.run.folder import SWEEP_SUMMARY, JobFolder

COLUMNS = ("job", "overrides", "status", "train/loss", "val/acc", "wall_s", "folder")


def job_row(job_dir: Path) -> dict[str, Any]:
    """The summary row of one job folder (status 'missing' when it has no summary.json)."""
    summary = JobFolder(job_dir).read_summary()
    if summary is None:
        return {"job": job_dir.name, "status": "missing", "folder": str(job_dir)}
    metrics = summary.get("metrics", {})
    held = {
        f"held:{a['assumption']}": a["fraction"]
        for a in (summary.get("verdicts") or {}).get("assumptions", [])
    }
    return {
        **held,
        "job": job_dir.name,
        "overrides": " ".join(summary.get("overrides", [])) or "(defaults)",
        "status": summary.get("status", "?"),
        "train/loss": metrics.get("train/loss"),
        "val/acc": metrics.get("val/acc"),
        "wall_s": summary.get("wall_time_s"),
        "folder": str(job_dir),
        "error": summary.get("error"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The fixed columns plus one ``held:<assumption>`` column per checked assumption."""
    held = sorted({k for r in rows for k in r if k.startswith("held:")})
    return (*COLUMNS[:-1], *held, COLUMNS[-1])


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """A plain-text table (fixed-width columns) of ``rows``; errors are listed below it.

    ``held:<name>`` columns give the fraction of probed steps on which that assumption held.
    """
    columns = columns or table_columns(rows)
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
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
