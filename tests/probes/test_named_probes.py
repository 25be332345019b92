"""A probe's config entry name is its identity: two instances of one probe class run side by
side (curvature on the current batch and on a fixed batch), log under their own prefixes,
keep separate checkpoint state and resume exactly."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from optprobe.analysis.verdicts import read_metrics_csv
from optprobe.run.job import train

RUN = [
    "debug=smoke",
    "probes=[curvature,curvature_fixed]",
    "probes.curvature.every_n_steps=2",
    "probes.curvature.lanczos_iters=6",
    "probes.curvature.trace_max_matvecs=2",
    "probes.curvature_fixed.every_n_steps=2",
    "probes.curvature_fixed.lanczos_iters=6",
    "probes.curvature_fixed.trace_max_matvecs=2",
    "probes.curvature_fixed.fixed_batch_size=32",
    "trainer.max_steps=8",
    "trainer.max_epochs=-1",
]


def test_two_curvature_probes_run_side_by_side_and_resume(make_cfg):
    full = make_cfg(RUN, name="full")
    _, objects = train(full)
    probes = {p.name: p for p in objects["trainer"].callbacks if hasattr(p, "prefix")}
    assert {n: p.prefix for n, p in probes.items()} == {
        "curvature": "curv",
        "curvature_fixed": "curvature_fixed",
    }
    metrics = read_metrics_csv(Path(full.paths.output_dir) / "metrics.csv")
    current = metrics.set_index("step")["curv/lambda_max"].dropna()
    fixed = metrics.set_index("step")["curvature_fixed/lambda_max"].dropna()
    assert list(current.index) == list(fixed.index) == [0.0, 2.0, 4.0, 6.0]
    assert all(math.isfinite(v) for v in [*current, *fixed])
    assert (current != fixed).any()  # different batches, different Hessians
    ckpt = torch.load(Path(full.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert {"optprobe.probe.curvature", "optprobe.probe.curvature_fixed"} <= set(ckpt["callbacks"])
    # stop at step 4 and resume: both probes continue exactly (own generators, fixed batch)
    first = make_cfg([*RUN, "trainer.max_steps=4"], name="resumed")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    train(make_cfg([*RUN, f"ckpt_path={last}"], name="resumed"))
    resumed = read_metrics_csv(Path(first.paths.output_dir) / "metrics.csv").set_index("step")
    for key, series in (("curv/lambda_max", current), ("curvature_fixed/lambda_max", fixed)):
        assert resumed[key].dropna().tolist() == series.tolist(), key
