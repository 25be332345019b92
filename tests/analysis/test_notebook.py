"""The analysis notebook runs (fast tier: on hand-written job folders), and JupyterLab is one
command away on a fresh clone (the ``[notebook]`` extra, ``make notebook``)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from job_folders import execute_notebook, write_sweep

from optprobe.analysis.report import FIGURES


def test_notebook_runs_on_a_sweep_of_job_folders(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    text = execute_notebook(sweep)
    assert "6 runs, 6 included" in text and "image/png" in text
    report = sweep / "report"
    assert (report / "report.html").is_file()
    assert all((report / name).is_file() for name in FIGURES)


def test_jupyterlab_comes_from_an_extra_and_a_make_target():
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    extra = re.search(r"^notebook = \[(.*?)^\]", pyproject, re.M | re.S)
    assert extra and re.search(r'"jupyterlab>=\d+[^"]*"', extra.group(1)), extra
    # the version it was tried with: pinned in the constraints file `make notebook` installs with
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^jupyterlab==\d+\.\d+\.\d+$", constraints, re.M)
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    dry = subprocess.run(
        ["make", "-n", "notebook", "SWEEP=/data/sweep"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pip install --quiet -e '.[notebook]' -c constraints.txt" in dry
    assert "OPTPROBE_SWEEP=/data/sweep .venv/bin/jupyter lab notebooks/analysis.ipynb" in dry
    readme = (ROOT / "README.md").read_text()
    assert "make notebook" in readme and "jupyter lab`" not in readme


@pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None, reason="no [notebook] extra")
def test_jupyterlab_starts_where_installed():
    out = subprocess.run(
        [sys.executable, "-m", "jupyterlab", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\s*", out.stdout), out
