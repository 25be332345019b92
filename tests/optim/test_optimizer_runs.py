"""Every configured optimizer through ``train.py`` with every probe, observer invariance for
optimizers with state, and Schedule-Free's train/eval points inside a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from job_harness import FULL_PROBES, metric_rows, run_train, trained_state

OPTIMIZERS = sorted(p.stem for p in (Path(CONF_DIR) / "optimizer").glob("*.yaml"))
# optimizers whose stability threshold is undefined (NaN + reason), by the registry's name
UNDEFINED = {
    "adafactor": "adafactor",
    "lion": "lion",
    "muon": "muon",
    "sf_adamw": "schedule_free_adamw",
    "sf_sgd": "schedule_free_sgd",
    "soap": "soap",
}
# optimizers with a geometry of their own (step/*_P keys): ‖·‖_P, ℓ∞ (lion), spectral (muon)
GEOMETRY = {"adam", "adamw", "rmsprop", "adagrad", "sf_adamw", "lion", "muon"}
BASE = ["debug=smoke", "data.batch_size=8", "trainer.max_steps=4"]


def assert_invariant(make_cfg, optimizer: str, *extra: str) -> tuple[dict, Path]:
    """probes=full (with the overrides ``extra``) leaves parameters and optimizer state
    bit-identical to probes=none; the probed run's (final parameters, job folder)."""
    probed, opt_probed, folder = trained_state(
        make_cfg([f"optimizer={optimizer}", *BASE, *FULL_PROBES, *extra], name="probed")
    )
    plain, opt_plain, _ = trained_state(
        make_cfg([f"optimizer={optimizer}", "probes=none", *BASE], name="plain")
    )
    for key in plain:
        assert torch.equal(probed[key], plain[key]), key
    for pid, state in opt_plain.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(opt_probed[pid][name]), torch.as_tensor(value)), name
    return probed, folder


def test_schedule_free_probes_observe_and_modes_switch(make_cfg):
    # validation after steps 2 and 4 in the probed run only: its eval/train round trips must
    # restore the training point bit for bit (the plain run never validates)
    probed, folder = assert_invariant(make_cfg, "sf_adamw", "trainer.val_check_interval=2")
    rows = metric_rows(folder)
    assert "val/loss" in rows[1]
    assert sorted(rows) == list(range(4))
    assert "curv/precond_lambda_max" in rows[2]  # SF-AdamW's preconditioner is read
    assert "step/smooth_lip_P" in rows[2]  # and gives the step probe its geometry
    assert math.isnan(rows[2]["curv/stability_threshold"])
    assert math.isfinite(rows[2]["curv/sharpness_ratio"])
    summary = json.loads((folder / "summary.json").read_text())
    assert "schedule_free_adamw" in summary["probes"]["curvature"]["threshold_undefined"]
    assert summary["probes"]["reference"]["replay"]["matches"] is True
    # last.ckpt holds the gradient point y in train mode; after fit the module holds the
    # averaged point x (eval mode), which differs from y
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["train_mode"] is True
    weight = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    assert not torch.equal(ckpt["state_dict"][weight], probed[weight])


@pytest.mark.slow
def test_lion_probes_observe(make_cfg):
    assert_invariant(make_cfg, "lion")


@pytest.mark.slow
def test_every_optimizer_runs_with_every_probe(tmp_path):
    assert {"sgd", "sgdm", "nesterov", "adam", "adamw", "rmsprop", "adagrad"} < set(OPTIMIZERS)
    assert set(UNDEFINED) < set(OPTIMIZERS)
    args = ["-m", f"optimizer={','.join(OPTIMIZERS)}", *BASE, *FULL_PROBES]
    out = run_train(args, tmp_path, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    for index, optimizer in enumerate(OPTIMIZERS):
        job = sweep / str(index)
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed", optimizer
        assert summary["overrides"][0] == f"optimizer={optimizer}"
        curvature = summary["probes"]["curvature"]
        thresholds = [
            r["curv/stability_threshold"]
            for r in metric_rows(job).values()
            if "curv/stability_threshold" in r
        ]
        assert thresholds, optimizer
        has_geometry = any("step/update_norm_P" in r for r in metric_rows(job).values())
        assert has_geometry == (optimizer in GEOMETRY), optimizer
        if optimizer in UNDEFINED:
            assert curvature["threshold_undefined"].startswith(UNDEFINED[optimizer])
            assert all(math.isnan(v) for v in thresholds), optimizer
        else:
            assert "threshold_undefined" not in curvature
            assert all(math.isfinite(v) and v >= 2 / 1.5 for v in thresholds), optimizer
