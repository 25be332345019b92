"""The subsampled-HVP benchmark on the MLP as a subprocess: its files, and a summary that is
the mean and spread of the per-draw deviations it wrote."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "hvp_subsample.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hvp_subsample_on_the_mlp_writes_deviations_and_their_summary(tmp_path: Path):
    cmd = [sys.executable, str(SCRIPT), "--quick", "--models", "mlp", "--firings", "2"]
    cmd += ["--fractions", "0.5", "--draws", "3", "--timed", "2", "--out-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "hvp-subsample-cpu-quick.json").read_text())
    mlp = results["models"]["mlp"]
    firings = mlp["firings"]
    assert [f["step"] for f in firings] == [0, 64]
    half = [f["fractions"]["0.5"] for f in firings]
    assert all(
        h["examples"] == f["batch"] // 2 and len(h["draws"]) == 3 for h, f in zip(half, firings)
    )
    assert all(h["hvp_time_ratio"] > 0 for h in half)
    summary = mlp["summary"]["0.5"]
    for q in ("lambda_max", "lambda_min", "trace"):
        draws = [[d[q] for d in h["draws"]] for h in half]
        assert summary[f"{q}_bias"] == pytest.approx(statistics.mean(sum(draws, [])))
        assert summary[f"{q}_spread"] == pytest.approx(
            statistics.mean(map(statistics.stdev, draws))
        )
        assert any(abs(v) > 0 for v in sum(draws, []))  # a subset is another function
    table = (tmp_path / "hvp-subsample-cpu-quick.md").read_text()
    assert "| mlp | 32 of 64 |" in table
