"""A non-finite loss is recorded, and the job stops or continues as configured, keeping its
outputs (optprobe.callbacks.non_finite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from job_harness import metric_rows

from optprobe.run.job import train


@pytest.mark.parametrize("action", ["stop", "continue"])
def test_nan_loss_is_recorded_and_outputs_kept(make_cfg, action):
    cfg = make_cfg(
        [
            "debug=smoke",
            "probes=step",
            "optimizer.lr=1e30",
            "trainer.max_steps=6",
            f"callbacks.non_finite.action={action}",
        ]
    )
    train(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    record = summary["non_finite_loss"]
    assert record["count"] >= 1 and record["action"] == action
    steps = list(metric_rows(out))
    if action == "stop":
        assert summary["status"] == "stopped: non-finite loss"
        assert len(steps) == record["first_step"] + 1
    else:
        assert summary["status"] == "completed" and len(steps) == 6
    assert (out / "config.yaml").is_file()
