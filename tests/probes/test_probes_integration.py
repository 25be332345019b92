"""Probes inside real Hydra-composed runs: observer invariance per model family, finiteness,
the reference replay, resume with probe state, and the per-job verdict summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from job_harness import metric_rows, trained_state

from optprobe.run.job import train

FAMILIES = {
    "logreg": ["model=logreg", "data=synthetic"],
    "mlp": ["model=mlp", "optimizer=adamw"],
    "resnet18": [
        "model=resnet18",
        "data=synthetic",
        "data.input_shape=[3,16,16]",
        "optimizer=sgdm",
    ],
    "vit_tiny": [
        "model=vit_tiny",
        "data=synthetic",
        "data.input_shape=[3,16,16]",
        "optimizer=adam",
    ],
    "gpt": [
        "model=gpt",
        "data=shakespeare",
        "data.max_chars=20000",
        "data.seq_len=16",
        "model.n_layer=1",
        "model.d_model=32",
        "optimizer=adamw",
        "trainer.gradient_clip_val=1.0",
    ],
}
TINY = [
    "debug=smoke",
    "data.batch_size=8",
    "trainer.max_steps=4",
    "probes.curvature.lanczos_iters=5",
    "probes.curvature.trace_max_matvecs=2",
    "probes.curvature.esd_iters=5",
    "probes.curvature.every_n_steps=2",
    "probes.noise.every_n_steps=2",
    "probes.noise.num_microbatches=2",
]


SLOW = {"resnet18", "vit_tiny"}  # three trainings each with every probe: ~1 min on 2 cores


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in sorted(FAMILIES)],
)
def test_probes_full_leaves_the_trajectory_bit_identical(make_cfg, family):
    base = FAMILIES[family]
    probed, opt_probed, folder = trained_state(make_cfg([*base, "probes=full", *TINY]))
    plain, opt_plain, _ = trained_state(make_cfg([*base, "probes=none", *TINY[:3]]))
    assert probed.keys() == plain.keys()
    for key in plain:  # parameters and BatchNorm buffers
        assert torch.equal(probed[key], plain[key]), key
    for pid, state in opt_plain.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(opt_probed[pid][name]), torch.as_tensor(value)), name
    rows = metric_rows(folder)
    assert sorted(rows) == list(range(4))
    families = {k.split("/")[0] for row in rows.values() for k in row}
    assert {"step", "curv", "noise", "ref", "layer", "layer_fresh"} <= families, families
    noise_ratios = ("noise/gns", "noise/snr")  # undefined (NaN) where |G|^2_unbiased <= 0
    for step, row in rows.items():
        for key, value in row.items():
            prefix = key.split("/")[0]
            if key in noise_ratios and row["noise/grad_sq_norm_unbiased"] <= 0:
                assert math.isnan(value), (step, key, value)
            elif prefix in {"step", "curv", "noise", "ref", "layer"} and not key.startswith(
                ("step/update_cos_prev", "ref/pl", "ref/weak_cvx")
            ):
                assert math.isfinite(value), (step, key, value)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["probes"]["reference"]["replay"]["matches"] is True
    assert summary["probes"]["step"]["probed"] == 4


def test_step_probe_scheme_is_recorded_in_config(make_cfg):
    """scheme=auto without the old-point keys picks the fresh-batch scheme: recorded in the
    config, and its keys say so (step_fresh/*)."""
    overrides = ["probes.step.scheme=auto", "probes.step.old_point_keys=false"]
    cfg = make_cfg(["debug=smoke", "probes=step", *overrides])
    train(cfg)
    text = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    assert "scheme: fresh_batch" in text
    keys = {k for row in metric_rows(Path(cfg.paths.output_dir)).values() for k in row}
    assert "step_fresh/loss_change" in keys and "step/loss_change" not in keys


def test_reference_run_is_reused(make_cfg, capsys):
    overrides = ["debug=smoke", "probes=reference", "model=logreg"]
    train(make_cfg(overrides, name="a"))
    assert "running the reference run" in capsys.readouterr().out
    cfg = make_cfg(overrides, name="b")
    cfg.paths.log_dir = str(Path(cfg.paths.output_dir).parent / "a")
    train(cfg)
    assert "reusing x*" in capsys.readouterr().out


def test_probes_budget_fraction_on_the_command_line(make_cfg):
    from optprobe.callbacks.budget import OverheadBudget

    cfg = make_cfg(["debug=smoke", "probes.budget=0.2", "trainer.max_steps=12"])
    _, objects = train(cfg)
    budgets = [c for c in objects["trainer"].callbacks if isinstance(c, OverheadBudget)]
    assert len(budgets) == 1 and budgets[0].budget == 0.2
    rows = metric_rows(Path(cfg.paths.output_dir))
    assert {r["probe/budget"] for r in rows.values() if "probe/budget" in r} == {0.2}
