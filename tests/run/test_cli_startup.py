"""The command line answers before torch and Lightning are imported: ``--cfg job`` and a
typo'd option come from Hydra alone (``python -X importtime`` lists every imported module)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torch", "pytorch_lightning", "lightning", "lightning_fabric", "wandb")


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level names of the modules a ``-X importtime`` run imported."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+([\w.]+)", importtime_stderr, re.M)
    return {name.split(".")[0] for name in names}


def run_python(*args: str, log_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        env={**os.environ, "OPTPROBE_LOG_DIR": str(log_dir)},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_importtime_parser_sees_torch_when_it_is_imported(tmp_path):
    out = run_python("-c", "import torch", log_dir=tmp_path)
    assert "torch" in imported_modules(out.stderr)


def test_entry_and_hydra_callbacks_import_no_training_library(tmp_path):
    code = "import train, optprobe.run.hydra_callbacks, optprobe.log"
    out = run_python("-c", code, log_dir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert imported_modules(out.stderr).isdisjoint(HEAVY)


def test_cfg_job_prints_the_config_without_torch(tmp_path):
    out = run_python("train.py", "--cfg", "job", "optimizer=adamw", log_dir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch.optim.AdamW" in out.stdout
    assert imported_modules(out.stderr).isdisjoint(HEAVY)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optimizer=nonexistent", "Could not find 'optimizer/nonexistent'"),
        ("optimizer.bogus_key=1", "Could not override 'optimizer.bogus_key'"),
    ],
)
def test_typo_is_a_hydra_error_without_torch(tmp_path, override, expected):
    out = run_python("train.py", override, log_dir=tmp_path)
    assert out.returncode != 0
    assert expected in out.stderr
    assert imported_modules(out.stderr).isdisjoint(HEAVY)
    assert not (tmp_path / "train").exists()
