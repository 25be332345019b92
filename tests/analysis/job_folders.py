"""Job folders written by hand (summary.json, config.yaml, metrics.csv as a job writes them),
with known held fractions, for the cross-run analysis without training anything."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd
import yaml

from optprobe.run.folder import JobFolder


def metrics(
    steps: int = 40,
    inst_gap_held: float = 0.9,
    descent_held: float = 0.3,
    ref_held: float = 0.8,
    loss0: float = 2.0,
    final_loss: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """A metrics table whose sign checks hold on exactly round(p * steps) steps (in random
    order): ``inst_gap`` (and ``inst_gap_old``), ``descent_bound`` and ``ref_gap``."""
    rng = np.random.default_rng(seed)

    def pattern(p: float) -> np.ndarray:
        held = np.zeros(steps, dtype=bool)
        held[: int(round(p * steps))] = True
        return rng.permutation(held)

    inst, desc, ref = pattern(inst_gap_held), pattern(descent_held), pattern(ref_held)
    change = -np.ones(steps)  # every step made progress
    g = rng.uniform(0.5, 2.0, steps)
    lip = 1.0 + 2.0 * g
    # descent bounds <g,Δ> + (L/2)‖Δ‖² with ‖Δ‖ = 1: -0.5 holds (≥ D = -1, < 0), -1.5 does not;
    # the same pattern for the online L (past) and the run's max (path, the headline)
    bound = np.where(desc, -0.5, -1.5)
    return pd.DataFrame(
        {
            "step": np.arange(steps),
            "train/loss": np.geomspace(loss0, final_loss, steps),
            "step/loss_change": change,
            "step/inst_gap": np.where(inst, -0.5, 0.5),
            "step/inst_gap_old": np.where(inst, 0.5, -0.5),
            "step/descent_bound_past": bound,
            "step/lin_old": bound - lip.max() / 2,
            "step/update_norm": np.ones(steps),
            "ref/gap": np.where(ref, -0.5, 0.5),
            "step/grad_norm": g,
            "step/smooth_lip": lip,
            "noise/trace_cov": rng.uniform(1.0, 2.0, steps),
        }
    )


def write_job(
    folder: Path,
    optimizer: str = "sgdm",
    seed: int = 0,
    model: str = "cnn",
    status: str = "completed",
    table: pd.DataFrame | None = None,
    summary: dict | None = None,
    **metric_args,
) -> JobFolder:
    """A finished job folder; ``table`` (default ``metrics(seed=seed, **metric_args)``) is
    written as metrics.csv, ``summary`` entries are added to summary.json."""
    job = JobFolder(folder)
    job.path.mkdir(parents=True, exist_ok=True)
    table = metrics(seed=seed, **metric_args) if table is None else table
    config = {
        "seed": seed,
        "choices": {"optimizer": optimizer, "model": model, "data": "mnist"},
        "optimizer": {"lr": 0.1},
        "trainer": {"log_every_n_steps": 1, "max_steps": len(table)},
    }
    job.config.write_text(yaml.safe_dump(config))
    table.to_csv(job.metrics, index=False)
    base = {"status": status, "global_step": len(table), "seed": seed}
    job.write_summary({**base, **(summary or {})})
    return job


def write_sweep(root: Path, optimizers=("sgdm", "adamw"), seeds=(0, 1, 2), **metric_args) -> Path:
    """One job folder per optimizer and seed, numbered like a Hydra multirun."""
    i = 0
    for opt in optimizers:
        for seed in seeds:
            write_job(root / str(i), optimizer=opt, seed=seed, **metric_args)
            i += 1
    return root


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def execute_notebook(sweep: Path) -> str:
    """Run notebooks/analysis.ipynb (outputs stripped in the repository) on ``sweep`` from the
    repository root; return its outputs as JSON text."""
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[2]
    nb = nbformat.read(root / "notebooks" / "analysis.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    )
    with patch.dict(os.environ, {"OPTPROBE_SWEEP": str(sweep)}):
        client.execute()
    return json.dumps([c.get("outputs", []) for c in nb.cells])
