"""DDP with 2 real CPU processes (gloo): probes see the global batch; files come from rank 0.

Slow tier. Each test starts ``train.py`` (Hydra, then optprobe's own rank launcher).
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from job_harness import (
    assert_same_steps,
    job_folder,
    marked_at_step,
    metric_rows,
    run_train,
    signal_while_training,
    start_train,
)

from optprobe.estimators.functional import (
    functional_loss,
    loss_and_grad,
    supervised,
    trainable_params,
)
from optprobe.estimators.noise_stats import two_batch_from_shards
from optprobe.estimators.per_example import per_example_grads
from optprobe.run.build import build

pytestmark = pytest.mark.slow

SHARD = 16  # examples per rank and step
COMMON = [
    "debug=smoke",
    "probes=full",
    "probes.noise.every_n_steps=1",
    "probes.curvature.every_n_steps=5",
    "probes.curvature.lanczos_iters=6",
    "probes.curvature.trace_max_matvecs=3",
    "probes.curvature.esd=false",
    "trainer.precision=64-true",
    "data.max_train_samples=128",
    "trainer.max_epochs=-1",
    "trainer.max_steps=24",
    "trainer.val_check_interval=null",
]
DDP = ["trainer=ddp", f"data.batch_size={SHARD}"]
SINGLE = [f"data.batch_size={2 * SHARD}"]
# Families computed on the global batch; the two-batch keys exist under DDP only, and the
# timing keys differ between any two runs.
COMPARED = ("step/", "ref/", "noise/", "curv/", "train/loss")
NOT_COMPARED = ("_two_batch", "curv/esd_saved")


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory) -> tuple[Path, Path, str]:
    ddp_logs = tmp_path_factory.mktemp("ddp")
    single_logs = tmp_path_factory.mktemp("single")
    out = run_train([*COMMON, *DDP], ddp_logs)
    assert out.returncode == 0, out.stderr[-4000:]
    single = run_train([*COMMON, *SINGLE], single_logs)
    assert single.returncode == 0, single.stderr[-4000:]
    return job_folder(ddp_logs), job_folder(single_logs), out.stdout


def test_ddp_probes_equal_a_single_process_run_on_the_global_batch(ddp_and_single):
    ddp, single, _ = ddp_and_single
    a, b = metric_rows(ddp), metric_rows(single)
    assert sorted(a) == sorted(b) == list(range(24))
    compared = set()
    for step in range(24):
        for key, value in b[step].items():
            if not key.startswith(COMPARED) or any(s in key for s in NOT_COMPARED):
                continue
            if key in ("noise/batch_size",):
                assert a[step][key] == value == 2 * SHARD
            assert key in a[step], (step, key)
            if math.isnan(value):
                assert math.isnan(a[step][key]), (step, key)
                continue
            assert a[step][key] == pytest.approx(value, rel=1e-6, abs=1e-12), (step, key)
            compared.add(key)
    for key in ("step/inst_gap", "step/smooth_eff", "step/curv_dir", "ref/gap", "ref/pl"):
        assert key in compared
    for key in ("noise/trace_cov", "noise/gns", "curv/lambda_max", "curv/trace"):
        assert key in compared


def test_ddp_writes_one_job_folder_from_rank_zero(ddp_and_single):
    ddp, _, stdout = ddp_and_single
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["processes"] == 2
    assert summary["global_step"] == 24
    assert summary["probes"]["reference"]["replay"]["matches"]
    names = {p.name for p in ddp.iterdir()}
    assert {"config.yaml", "metrics.csv", "summary.json", "verdicts.json"} <= names
    assert not [n for n in names if "ddp_process" in n]  # no per-rank logs or folders
    assert stdout.count("Verdicts (") == 1  # the job summary is printed once


def shard_gradients_at_init(ddp: Path) -> torch.Tensor:
    """The two ranks' gradients of step 0, recomputed from the config in one process."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ddp / "config.yaml")
    cfg.pop("choices")
    pl.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    datamodule, module = objects["datamodule"], objects["module"]
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    order = list(loader.sampler)[: 2 * SHARD]  # the global batch of step 0
    net = module.net.double()
    params = trainable_params(net)
    loss = supervised(module.loss_fn)
    rows = []
    for rank in (0, 1):
        inputs, targets = loader.dataset[order[rank::2]]  # DistributedSampler: every 2nd index
        fn = functional_loss(net, (inputs.double(), targets), loss)
        rows.append(loss_and_grad(fn, params)[1])
    return torch.stack(rows), (net, params, loader.dataset[order], loss)


def test_two_batch_noise_uses_the_per_rank_gradients(ddp_and_single):
    ddp, _, _ = ddp_and_single
    rows = metric_rows(ddp)
    shards, (net, params, (inputs, targets), loss) = shard_gradients_at_init(ddp)
    grad_sq, trace_cov, gns = two_batch_from_shards(shards, SHARD)
    logged = rows[0]
    assert logged["noise/trace_cov_two_batch"] == pytest.approx(trace_cov, rel=1e-6)
    assert logged["noise/grad_sq_norm_two_batch"] == pytest.approx(grad_sq, rel=1e-6)
    assert logged["noise/gns_two_batch"] == pytest.approx(gns, rel=1e-6)
    # and the per-example estimate on the same global batch, brute force
    per_ex = per_example_grads(net, params, (inputs.double(), targets), loss)
    brute = float(((per_ex - per_ex.mean(0)) ** 2).sum()) / (per_ex.shape[0] - 1)
    assert logged["noise/trace_cov"] == pytest.approx(brute, rel=1e-6)


def test_two_batch_estimate_agrees_with_per_example_on_average(ddp_and_single):
    ddp, _, _ = ddp_and_single
    rows = [r for r in metric_rows(ddp).values() if "noise/trace_cov_two_batch" in r]
    assert len(rows) == 24
    diff = torch.tensor([r["noise/trace_cov_two_batch"] - r["noise/trace_cov"] for r in rows])
    per_example = torch.tensor([r["noise/trace_cov"] for r in rows])
    stderr = float(diff.std()) / math.sqrt(len(rows))
    # unbiased for the same tr Σ: the mean difference is within 4 standard errors of zero
    assert abs(float(diff.mean())) <= 4 * stderr, (float(diff.mean()), stderr)
    assert stderr < 0.5 * float(per_example.mean())  # and the test has power


def test_multirun_with_ddp_runs_each_job_once_with_one_wandb_run(tmp_path):
    out = run_train(
        ["-m", "optimizer=sgd,adam", "trainer=ddp", "debug=smoke", "logger=wandb"],
        tmp_path,
        env_extra={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1  # no rank started the sweep again
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["processes"] == 2
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1


def test_ddp_resume_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    common = [
        "trainer=ddp",
        "debug=smoke",
        "probes=[step,noise]",
        "probes.noise.every_n_steps=2",
        f"data.batch_size={SHARD}",
        "trainer.max_epochs=-1",
        "trainer.val_check_interval=null",
    ]
    full = run_train([*common, "trainer.max_steps=10"], tmp_path / "full")
    assert full.returncode == 0, full.stderr[-4000:]
    first = run_train([*common, "trainer.max_steps=6"], tmp_path / "split")
    assert first.returncode == 0, first.stderr[-4000:]
    job = job_folder(tmp_path / "split")
    resumed = run_train(
        [
            *common,
            "trainer.max_steps=10",
            f"ckpt_path={job}/checkpoints/last.ckpt",
            f"hydra.run.dir={job}",
        ],
        tmp_path / "split",
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a, b = metric_rows(job_folder(tmp_path / "full")), metric_rows(job)
    assert sorted(a) == sorted(b) == list(range(10))  # step 6 is mid-epoch (4 steps each)
    for step in range(10):
        keys = [k for k in a[step] if k.startswith(("step/", "noise/", "train/loss"))]
        assert len(keys) > 10
        for key in keys:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-9, nan_ok=True), (step, key)


def test_smoke_config_runs_on_three_processes(tmp_path):
    """debug=smoke trains its 6 steps whatever the number of ranks (an epoch of 128 examples
    is 2 batches per rank on 3 ranks)."""
    out = run_train(["trainer=ddp", "trainer.devices=3", "debug=smoke", "probes=none"], tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((job_folder(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 3
    assert summary["global_step"] == 6 and "val/acc" in summary["metrics"]


# Every probe on, a finite number of epochs (4 steps each: 128 examples, 2 ranks x 16).
RESUME_STEPS = 8
RESUME_RUN = [
    *(c for c in COMMON if not c.startswith(("trainer.max_steps", "trainer.max_epochs"))),
    "trainer.max_epochs=10",
    *DDP,
]


def reference_of(job: Path) -> str:
    """The override that measures against the x* ``job`` used (its own reference run)."""
    summary = json.loads((job / "summary.json").read_text())
    return f"probes.reference.ckpt={summary['probes']['reference']['ckpt']}"


@pytest.fixture(scope="module")
def ddp_uninterrupted(tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("ddp_full")
    out = run_train([*RESUME_RUN, f"trainer.max_steps={RESUME_STEPS}"], logs)
    assert out.returncode == 0, out.stderr[-4000:]
    return job_folder(logs)


@pytest.mark.parametrize("stop", [2, 4], ids=["mid_epoch", "epoch_end"])
def test_ddp_resume_with_finite_epochs_equals_the_uninterrupted_run(
    ddp_uninterrupted, tmp_path, stop
):
    run = [*RESUME_RUN, reference_of(ddp_uninterrupted)]
    first = run_train([*run, f"trainer.max_steps={stop}"], tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    job = job_folder(tmp_path)
    resume = [f"ckpt_path={job}/checkpoints/last.ckpt", f"hydra.run.dir={job}"]
    resumed = run_train([*run, f"trainer.max_steps={RESUME_STEPS}", *resume], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    compared = assert_same_steps(ddp_uninterrupted, job, RESUME_STEPS)
    assert {"step/curv_dir", "ref/gap", "noise/trace_cov", "curv/lambda_max"} <= compared
    verdicts = json.loads((job / "verdicts.json").read_text())
    assert verdicts == json.loads((ddp_uninterrupted / "verdicts.json").read_text())


def test_ddp_sigterm_to_rank_zero_stops_every_rank_at_one_step(ddp_uninterrupted, tmp_path):
    """SIGTERM reaches rank 0 only: the ranks agree at the end of the step, checkpoint it and
    stop; rank 0 exits 143, and the resumed job equals the uninterrupted one."""
    args = [*RESUME_RUN, f"trainer.max_steps={RESUME_STEPS}", reference_of(ddp_uninterrupted)]
    marker = tmp_path / "training"
    proc = start_train([*args, *marked_at_step(marker, 3)], tmp_path)
    output = signal_while_training(proc, marker, "SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM, output[-4000:]
    job = job_folder(tmp_path)
    record = json.loads((job / "summary.json").read_text())["interruption"]
    assert record["signal"] == "SIGTERM" and 3 <= record["step"] < RESUME_STEPS
    resume = [f"ckpt_path={record['checkpoint']}", f"hydra.run.dir={job}"]
    resumed = run_train([*args, *resume], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_steps(ddp_uninterrupted, job, RESUME_STEPS)
