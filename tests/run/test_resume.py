"""Resume equals an uninterrupted run, probe state included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from job_harness import SMOKE_WITH_PROBES, metric_rows

from optprobe.run.job import train

FAMILIES = {"step", "noise", "curv", "train"}  # the keys compared step by step


def test_resume_mid_epoch_matches_uninterrupted_run(make_cfg):
    full = make_cfg([*SMOKE_WITH_PROBES, "trainer.max_steps=10"], name="full")
    train(full)
    first = make_cfg([*SMOKE_WITH_PROBES, "trainer.max_steps=6"], name="split")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(
        [*SMOKE_WITH_PROBES, "trainer.max_steps=10", f"ckpt_path={ckpt}"], name="split"
    )
    train(resumed)
    a, b = metric_rows(Path(full.paths.output_dir)), metric_rows(Path(resumed.paths.output_dir))
    assert sorted(a) == sorted(b) == list(range(10))
    compared = 0
    for step in range(10):
        keys = [k for k in a[step].keys() | b[step].keys() if k.split("/")[0] in FAMILIES]
        for key in keys:
            assert key in a[step] and key in b[step], (step, key)
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-9), (step, key)
            compared += 1
    assert compared > 300
    va = json.loads((Path(full.paths.output_dir) / "verdicts.json").read_text())
    vb = json.loads((Path(resumed.paths.output_dir) / "verdicts.json").read_text())
    assert va == vb
    sa = json.loads((Path(full.paths.output_dir) / "summary.json").read_text())["probes"]
    sb = json.loads((Path(resumed.paths.output_dir) / "summary.json").read_text())["probes"]
    assert sa["step"]["held"] == sb["step"]["held"]
