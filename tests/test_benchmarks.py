"""The overhead benchmark in its smallest mode (MLP only, quick) as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "overhead.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_benchmark_on_the_mlp_writes_json_and_table(tmp_path: Path):
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--models",
        "mlp",
        "--device",
        "cpu",
        "--reps",
        "1",
        "--out-dir",
        str(tmp_path),
        "--tag",
        "smoke",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "smoke.json").read_text())
    meta = results["meta"]
    assert meta["mode"] == "quick" and "overhead.py" in meta["command"]
    assert meta["machine"]["cpu_cores"] >= 1 and meta["machine"]["torch"]
    mlp = results["models"]["mlp"]
    configs = mlp["overhead"]["configs"]
    expected = {
        "step@1",
        "step@16",
        "step@64",
        "step_fresh@1",
        "step_fresh@16",
        "curvature@16",
        "curvature@64",
        "noise@1",
        "noise@16",
        "bundle@16",
        "bundle@64",
    }
    assert set(configs) == expected
    for name, cfg in configs.items():
        assert cfg["time_ratio"] > 0, name
        assert cfg["mem_ratio"] > 0, name
        assert cfg["repetitions"] == 1 and cfg["block_steps"] >= cfg["cadence"]
        if cfg["kind"] in ("curvature", "bundle"):  # converged Lanczos + trace: > 2 HVPs
            assert cfg["curvature_hvps_per_firing"] > 2, name
    costs = mlp["costs"]
    assert costs["hvp_steps"] > 0 and costs["train_step_ms"] > 0
    lam = costs["lambda_max"]
    assert lam["lanczos_hvps_to_1e-3"] >= 1
    assert lam["reference"] > 0
    # every peer is either measured or recorded with why it is not
    for tool in ("pyhessian", "curvlinops", "backpack"):
        assert mlp["peers"][tool]["status"] in ("ok", "error", "not installed")
        if mlp["peers"][tool]["status"] != "ok":
            assert mlp["peers"][tool].get("error") or mlp["peers"][tool]["status"]
    names = {t["target"] for t in results["targets"]}
    assert any("λ_max" in n for n in names)
    assert {"fresh-batch convexity keys every step", "full bundle at cadence 64"} <= names

    table = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in table and "## Overhead" in table and "| step@16 |" in table
    assert meta["command"] in table
