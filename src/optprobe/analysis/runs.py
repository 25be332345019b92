"""Collect finished runs from the local run store, W&B offline folders or the W&B API."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from optprobe.analysis.verdicts import read_metrics_csv
from optprobe.analysis.wandb_offline import offline_run_dirs, read_wandb_run

W_AND_B_STEP = "trainer/global_step"


@dataclass
class RunRecord:
    """One run: where it came from, its flattened config and its per-step metrics."""

    run_id: str
    source: str
    location: str
    config: dict[str, Any]
    history: pd.DataFrame
    status: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)


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


def load_local_runs(root: str | Path) -> list[RunRecord]:
    """Every job folder under ``root`` with a summary.json and a metrics.csv (the reference
    runs optprobe keeps under ``reference_runs/`` are not jobs of the sweep)."""
    root = Path(root).resolve()
    records = []
    for summary_path in sorted(root.rglob("summary.json")):
        folder = summary_path.parent
        if (
            "reference_runs" in folder.relative_to(root).parts
            or not (folder / "metrics.csv").is_file()
        ):
            continue
        summary = json.loads(summary_path.read_text())
        config_path = folder / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        records.append(
            RunRecord(
                run_id=_job_id(folder, root),
                source="local",
                location=str(folder),
                config=flatten(config),
                history=read_metrics_csv(folder / "metrics.csv"),
                status=summary.get("status", "unknown"),
            )
        )
    return records


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
    run id is the job folder holding it, so it matches ``load_local_runs``. A job that resumed
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
        records.append(
            RunRecord(
                run_id=_job_id(job_folder, root),
                source="wandb-offline",
                location=str(last_dir),
                config=flatten({k: v for k, v in last.config.items() if not k.startswith("_")}),
                history=history_from_rows(row for _, rec in starts for row in rec.history),
                extra={"name": last.name, "summary": last.summary, "starts": len(starts)},
            )
        )
    return records


def load_wandb_api_runs(entity: str, project: str, group: str | None = None) -> list[RunRecord]:
    """Runs of a W&B project (optionally one group = one sweep) through the public API."""
    import wandb

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
                status=run.state,
            )
        )
    return records
