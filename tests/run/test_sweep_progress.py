"""The "job i of N, ~T left" line of a multirun (``SweepProgress``): the grid size it counts,
and the lines a real multirun prints."""

from __future__ import annotations

import re

import pytest
from job_harness import run_train
from omegaconf import OmegaConf

from optprobe.run.hydra_callbacks import sweep_size


def sweep_config(task: list[str], params: dict | None = None):
    return OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}})


def test_sweep_size_is_the_grid_of_sweep_overrides_and_sweeper_params():
    assert sweep_size(sweep_config(["optimizer=sgd,adam", "seed=0,1,2", "debug=smoke"])) == 6
    assert sweep_size(sweep_config(["seed=range(0,5)"], {"model": "mlp,gpt"})) == 10
    assert sweep_size(sweep_config(["debug=smoke"])) == 1


def test_sweep_size_of_a_non_grid_sweep_is_unknown():
    assert sweep_size(sweep_config(["optimizer.lr=interval(0.001,0.1)"])) is None


@pytest.mark.slow
def test_multirun_prints_job_i_of_n_with_time_left(tmp_path):
    series = ["hydra.callbacks.progress.jobs_before=4", "hydra.callbacks.progress.jobs_total=10"]
    out = run_train(["-m", "optimizer=sgd,adam", "debug=smoke", "probes=none", *series], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[optprobe] job")]
    assert lines[0] == "[optprobe] job 5 of 10"
    assert re.fullmatch(r"\[optprobe\] job 6 of 10, ~(\d+m)?\d+s left", lines[1]), lines
    assert len(lines) == 2
