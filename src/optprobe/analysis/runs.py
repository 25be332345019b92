"""Collect finished runs from the local run store, W&B offline folders or the W&B API."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from optprobe.analysis.metrics_file import read_history
from optprobe.analysis.wandb_offline import offline_run_dirs, read_wandb_run
from optprobe.extras import require
from optprobe.run.folder import REFERENCE_RUNS_DIR, REPORT_DIR, JobFolder

W_AND_B_STEP = "trainer/global_step"
HYDRA_RECORD = "hydra.yaml"  # Hydra's own record in .hydra/ (runtime choices)
WANDB_STATES = {
    "finished": "completed",
    "crashed": "failed",
    "failed": "failed",
    "killed": "failed",
}
"""W&B run states -> the job statuses of summary.json (others, e.g. "running", kept)."""


@dataclass
class RunRecord:
    """One run: where it came from, its flattened config, its per-step metrics, its status
    (``completed``, ``failed``, ``running``, ``preempted at step k``, ``missing`` when the job
    left no summary...), its summary (the job's summary.json) and what was wrong with its
    files when they were read (``problems``: (reason, detail) pairs, see
    :mod:`optprobe.analysis.run_status`)."""

    run_id: str
    source: str
    location: str
    config: dict[str, Any]
    history: pd.DataFrame
    status: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}`` (lists kept as values)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def _job_id(folder: Path, root: Path) -> str:
    rel = folder.relative_to(root)
    return str(rel) if str(rel) != "." else folder.name


_NOT_JOBS = {REFERENCE_RUNS_DIR, REPORT_DIR, "wandb", JobFolder.CHECKPOINTS, JobFolder.HYDRA}


def job_folders(root: str | Path) -> list[Path]:
    """Every job folder under ``root`` (one holding a summary.json or Hydra's ``.hydra``
    records, finished or not), outside the reference runs, reports and W&B folders."""
    root = Path(root).resolve()
    found = {p.parent for p in root.rglob(JobFolder.SUMMARY)}
    found |= {p.parent for p in root.rglob(JobFolder.HYDRA) if p.is_dir()}
    return sorted(
        f for f in found if not _NOT_JOBS & set(f.relative_to(root).parts) and JobFolder(f).is_job()
    )


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{path.name} unreadable: {err}"
    return (data if isinstance(data, dict) else None), None


def _job_config(job: JobFolder) -> dict[str, Any]:
    """The job's saved config; a job that failed before saving it has only Hydra's composed
    config and choices (``.hydra/config.yaml``, ``.hydra/hydra.yaml``)."""
    if job.config.is_file():
        return flatten(yaml.safe_load(job.config.read_text()) or {})
    hydra = job.path / JobFolder.HYDRA
    config: dict[str, Any] = {}
    if (hydra / JobFolder.CONFIG).is_file():
        config = yaml.safe_load((hydra / JobFolder.CONFIG).read_text()) or {}
    if (hydra / HYDRA_RECORD).is_file():
        runtime = (yaml.safe_load((hydra / HYDRA_RECORD).read_text()) or {}).get("hydra", {})
        config["choices"] = dict((runtime.get("runtime") or {}).get("choices") or {})
    return flatten(config)


def read_job(folder: Path, root: Path) -> RunRecord:
    """One job folder as a run record; what is missing or damaged goes to ``problems``."""
    job = JobFolder(folder)
    summary, broken = _read_json(job.summary)
    history, problems = read_history(job.metrics)
    if broken:
        problems.append(("incomplete", broken))
    return RunRecord(
        run_id=_job_id(folder, root),
        source="local",
        location=str(folder),
        config=_job_config(job),
        history=history,
        status=str(summary.get("status", "unknown")) if summary else "missing",
        summary=summary or {},
        problems=problems,
    )


def load_local_runs(root: str | Path) -> list[RunRecord]:
    """Every job folder under ``root`` (the reference runs optprobe keeps under
    ``reference_runs/`` are not jobs of the sweep), including failed and unfinished jobs:
    the analysis decides which runs it uses (:mod:`optprobe.analysis.run_status`)."""
    root = Path(root).resolve()
    return [read_job(folder, root) for folder in job_folders(root)]


def history_from_rows(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """W&B history rows -> one row per ``trainer/global_step`` named ``step`` (numeric keys)."""
    merged: dict[int, dict[str, float]] = {}
    for row in rows:
        if W_AND_B_STEP not in row:
            continue
        target = merged.setdefault(int(row[W_AND_B_STEP]), {})
        for key, value in row.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and not key.startswith("_")
            ):
                target[key] = float(value)
    df = pd.DataFrame([{**v, "step": k} for k, v in sorted(merged.items())])
    drop = [c for c in (W_AND_B_STEP,) if c in df.columns]
    return df.drop(columns=drop)


def load_wandb_offline_runs(root: str | Path) -> list[RunRecord]:
    """Every W&B run folder (``wandb/offline-run-*``) under ``root``, read back locally. The
    run id is the job folder holding it, so it matches ``load_local_runs``; the status comes
    from the job folder's summary.json (``missing`` without one). A job that resumed
    (requeue, ``ckpt_path=``) has one folder per start, all of the same W&B run: their
    histories are joined in order (later values win at a step) into one record."""
    root = Path(root).resolve()
    parts: dict[Path, list[tuple[Path, Any]]] = {}
    for run_dir in offline_run_dirs(root):  # sorted: offline-run-<start time>-<id>
        job_folder = run_dir.parent.parent  # <job>/wandb/offline-run-*
        if "reference_runs" in job_folder.relative_to(root).parts:
            continue
        parts.setdefault(job_folder, []).append((run_dir, read_wandb_run(run_dir)))
    records = []
    for job_folder, starts in parts.items():
        last_dir, last = starts[-1]
        summary, broken = _read_json(JobFolder(job_folder).summary)
        records.append(
            RunRecord(
                run_id=_job_id(job_folder, root),
                source="wandb-offline",
                location=str(last_dir),
                config=flatten({k: v for k, v in last.config.items() if not k.startswith("_")}),
                history=history_from_rows(row for _, rec in starts for row in rec.history),
                status=str(summary.get("status", "unknown")) if summary else "missing",
                extra={"name": last.name, "summary": last.summary, "starts": len(starts)},
                summary=summary or {},
                problems=[("incomplete", broken)] if broken else [],
            )
        )
    return records


def load_wandb_api_runs(entity: str, project: str, group: str | None = None) -> list[RunRecord]:
    """Runs of a W&B project (optionally one group = one sweep) through the public API."""
    wandb = require("wandb", "reading runs through the W&B API")

    filters = {"group": group} if group else {}
    records = []
    for run in wandb.Api().runs(f"{entity}/{project}", filters=filters):
        records.append(
            RunRecord(
                run_id=run.name or run.id,
                source="wandb",
                location=run.url,
                config=flatten({k: v for k, v in run.config.items() if not k.startswith("_")}),
                history=history_from_rows(run.scan_history()),
                status=WANDB_STATES.get(run.state, run.state),
                summary={
                    "global_step": run.summary.get(W_AND_B_STEP),
                    "metrics": {k: v for k, v in run.summary.items() if not k.startswith("_")},
                },
            )
        )
    return records
