"""summary.json's wall time: ``wall_time_s`` is this segment, ``wall_time_total_s`` adds the
earlier segments, whose total travels in the checkpoint (``WallClock``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from optprobe.run.job import train
from optprobe.run.wall_clock import WallClock


def summary_of(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


def test_total_wall_time_adds_the_segment_before_a_resume(make_cfg):
    first = make_cfg(["debug=smoke", "probes=none", "trainer.max_steps=3"], name="job")
    train(first)
    s1 = summary_of(first)
    assert s1["wall_time_total_s"] == pytest.approx(s1["wall_time_s"], abs=0.01)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)["callbacks"][WallClock.STATE_KEY]["total_s"]
    assert 0 < saved <= s1["wall_time_s"]  # written at the last step, before the job ended

    resumed = make_cfg(
        ["debug=smoke", "probes=none", "trainer.max_steps=6", f"ckpt_path={ckpt}"], name="job"
    )
    train(resumed)
    s2 = summary_of(resumed)
    assert s2["wall_time_total_s"] - s2["wall_time_s"] == pytest.approx(saved, abs=0.01)
    assert s2["wall_time_total_s"] > s2["wall_time_s"]
