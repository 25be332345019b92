"""The HVP memory benchmark on the MLP as a subprocess: its files, and numbers that add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "hvp_memory.py"
MIB = 2**20


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hvp_memory_on_the_mlp_writes_a_consistent_breakdown(tmp_path: Path):
    cmd = [sys.executable, str(SCRIPT), "--models", "mlp", "--out-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "hvp-memory-cpu.json").read_text())
    assert results["device"] == "cpu" and "VmHWM" in results["method"]
    mlp = results["models"]["mlp"]
    assert mlp["env"]["MALLOC_MMAP_THRESHOLD_"] == "65536"  # the script re-ran itself with it
    assert mlp["machine"]["cpu_cores"] >= 1 and mlp["seconds"] > 0
    assert "hvp_memory.py" in mlp["command"] and not mlp["capped_below_default"]
    dim, a = mlp["num_params"], mlp["analytic"]
    assert dim == 8970 and a["basis_dtype"] == "float64"  # dim <= 1M: float64 basis
    assert a["params_mib"] == pytest.approx(dim * 4 / MIB)
    assert a["float64_vector_mib"] == pytest.approx(dim * 8 / MIB)
    assert a["basis_at_cap_mib"] == pytest.approx(mlp["lanczos_cap"] * dim * 8 / MIB)
    assert a["basis_at_cap_mib"] == pytest.approx(a["basis_cap_rows"] * a["basis_row_mib"])
    # the CPU allocates the cap at once; CUDA grows 16 -> 80 once, 96 rows at the peak
    assert a["device_growth_rows_at_cap"] == [80]
    assert a["cuda_growth_rows_at_default_cap"] == [16, 80]
    assert a["cuda_growth_peak_rows_at_default_cap"] == 96

    m = mlp["measured"]
    for key in ("plain_step", "graph", "hvp", "firing"):
        block = m[key]
        assert block["absolute_peak_mib"] > 0 and block["seconds"] > 0, key
        assert block["peak_mib"] >= 0 and block["peak_mib"] >= block["held_mib"] - 1.0, key
        assert block["absolute_peak_mib"] == pytest.approx(block["before_mib"] + block["peak_mib"])
    firing = m["firing"]
    assert firing["peak_mib"] > 0
    assert 1 <= firing["lanczos_steps"] <= firing["basis_allocated_rows"] == mlp["lanczos_cap"]
    assert firing["trace_matvecs"] >= 2 and firing["lambda_max"] > 0
    assert m["firing_over_plain_absolute"] > 0
    checks = m["basis_check"]  # Lanczos alone to the cap: as on the CPU, and as on CUDA
    assert set(checks) == {"this_device", "chunk_then_cap"}
    for check in checks.values():
        assert check["steps"] == check["allocated_rows"] == mlp["lanczos_cap"]
        assert check["basis_written_mib"] == pytest.approx(a["basis_at_cap_mib"])
        assert check["peak_mib"] > 0

    table = (tmp_path / "hvp-memory-cpu.md").read_text()
    assert mlp["command"] in table and "## Measured" in table and "## Analytic sizes" in table
    assert "| mlp | whole firing (measure) |" in table
