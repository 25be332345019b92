"""On a CUDA device: every probe (``probes=full``, the reference replay included) leaves the
training trajectory unchanged, and the curvature probe's lambda_max is finite.

``pytest -m gpu``; skipped without CUDA. ``trainer=gpu`` trains with ``deterministic: false``
(as users run it), so the runs are compared within a stated tolerance instead of bit for bit;
the test also checks that training moved the parameters much further than that tolerance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from job_harness import metric_rows, trained_state

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU = ["debug=smoke", "trainer=gpu", "trainer.max_steps=8"]
PROBES = [
    "probes=full",
    "probes.curvature.every_n_steps=2",
    "probes.curvature.lanczos_iters=20",
    "probes.curvature.esd_iters=10",
    "probes.noise.every_n_steps=2",
]
# Observer invariance on the GPU: ‖x_probed - x_plain‖ <= RTOL ‖x_plain‖ per tensor (also the
# reference replay's own check, probes.reference.replay_rtol). Deterministic kernels give 0.
RTOL = 1e-5


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_probes_full_on_the_gpu_leave_training_unchanged(make_cfg):
    torch.cuda.reset_peak_memory_stats()
    one_step = make_cfg([*GPU, "probes=none", "trainer.max_steps=1"], name="one_step")
    first_step, _, _ = trained_state(one_step)
    probed_cfg = make_cfg([*GPU, *PROBES, f"probes.reference.replay_rtol={RTOL}"], name="probed")
    probed, opt_probed, folder = trained_state(probed_cfg)
    plain, opt_plain, _ = trained_state(make_cfg([*GPU, "probes=none"], name="plain"))

    assert probed.keys() == plain.keys()
    for key in plain:
        assert relative_distance(probed[key], plain[key]) <= RTOL, key
    for pid, state in opt_plain.items():
        for name, value in state.items():
            got = torch.as_tensor(opt_probed[pid][name]).cpu()
            assert relative_distance(got, torch.as_tensor(value).cpu()) <= RTOL, (pid, name)
    assert torch.cuda.max_memory_allocated() > 0  # the runs really trained on the device
    # the tolerance is far below what the 7 steps after the first one changed
    weights = [k for k in plain if plain[k].is_floating_point()]
    assert max(relative_distance(plain[k], first_step[k]) for k in weights) > 100 * RTOL

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["probes"]["reference"]["replay"]["matches"] is True  # within RTOL of x*
    rows = metric_rows(folder)
    lam = {step: row["curv/lambda_max"] for step, row in rows.items() if "curv/lambda_max" in row}
    assert sorted(lam) == [0, 2, 4, 6]
    assert all(math.isfinite(v) and v > 0 for v in lam.values()), lam
