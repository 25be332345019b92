"""Read a W&B run folder (offline or synced) back locally with ``wandb leet inspect --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optprobe.extras import check_installed


@dataclass
class WandbRunRecords:
    """Config, per-step history and final summary of one W&B run, as plain Python values."""

    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "wandb"]


def offline_run_dirs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*``/``run-*`` folder holding a ``.wandb`` log under ``root``."""
    return sorted(p.parent for p in Path(root).rglob("run-*.wandb"))


def read_wandb_run(run_dir: str | Path, timeout_s: float = 120) -> WandbRunRecords:
    """Parse the transaction log of one run folder (``run-<id>.wandb`` inside it) with the
    ``wandb`` command of the [wandb] extra."""
    check_installed("wandb", "reading W&B run folders")
    cmd = [*_wandb_cli(), "leet", "inspect", "--json", str(run_dir)]
    env = {**os.environ, "WANDB_SILENT": "true"}
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL
    )
    if out.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({out.returncode}): {out.stderr.strip()}")
    records = WandbRunRecords()
    for line in out.stdout.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = rec.get("type")
        if kind == "run":
            run = rec["run"]
            records.run_id = run.get("run_id")
            records.name = run.get("display_name")
            records.group = run.get("run_group")
        elif kind == "config":
            records.config.update(rec["config"].get("update", {}))
        elif kind == "history":
            records.history.append(rec["history"]["item"])
        elif kind == "summary":
            records.summary.update(rec["summary"].get("update", {}))
    return records
