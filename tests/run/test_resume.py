"""Resume equals an uninterrupted run, probe state included, for finite and infinite epochs
and at any step of an epoch; a resume that cannot train is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from job_harness import FULL_PROBES, SMOKE_WITH_PROBES, assert_same_steps, metric_rows

from optprobe.run.folder import JobFolder
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
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-9, nan_ok=True), (step, key)
            compared += 1
    assert compared > 300
    va = json.loads((Path(full.paths.output_dir) / "verdicts.json").read_text())
    vb = json.loads((Path(resumed.paths.output_dir) / "verdicts.json").read_text())
    assert va == vb
    sa = json.loads((Path(full.paths.output_dir) / "summary.json").read_text())["probes"]
    sb = json.loads((Path(resumed.paths.output_dir) / "summary.json").read_text())["probes"]
    assert sa["step"]["held"] == sb["step"]["held"]


# 64 examples in batches of 16: 4 steps per epoch, 8 steps in all. Every probe on.
STEPS = 8
MATRIX_RUN = [
    "debug=smoke",
    *FULL_PROBES,
    "data.max_train_samples=64",
    "trainer.val_check_interval=null",
]
FINITE, INFINITE = 10, -1
# after the first step, in the middle of epoch 0, after its last batch, after the first
# batch of epoch 1
POSITIONS = (1, 2, 4, 5)
# in the fast tier: mid-epoch with finite epochs (Lightning never restored the loader
# there) and after an epoch's last batch (the saved position is the end of the epoch)
FAST = {(FINITE, 2), (FINITE, 4), (INFINITE, 4)}
MATRIX = [
    pytest.param(e, k, marks=() if (e, k) in FAST else pytest.mark.slow, id=f"epochs{e}-stop{k}")
    for e in (FINITE, INFINITE)
    for k in POSITIONS
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compose_cfg):
    """``uninterrupted(max_epochs)``: the 8-step job (run once per epoch setting) and the x*
    its reference probe used."""
    runs: dict[int, tuple[JobFolder, str]] = {}

    def get(max_epochs: int) -> tuple[JobFolder, str]:
        if max_epochs not in runs:
            root = tmp_path_factory.mktemp(f"full_epochs{max_epochs}")
            overrides = [*MATRIX_RUN, f"trainer.max_epochs={max_epochs}"]
            cfg = compose_cfg([*overrides, f"trainer.max_steps={STEPS}"], root)
            train(cfg)
            runs[max_epochs] = (JobFolder(cfg.paths.output_dir), cfg.probes.reference.ckpt)
        return runs[max_epochs]

    return get


@pytest.mark.parametrize(("max_epochs", "stop"), MATRIX)
def test_resume_at_any_step_equals_the_uninterrupted_run(uninterrupted, make_cfg, max_epochs, stop):
    """Stopped after step ``stop`` and resumed to the end: every probe value of every step,
    the verdicts and the probes' held counts equal the uninterrupted run's. The split run
    measures against the same x* (passed by hand: its own reference run would end at
    ``stop``)."""
    full, x_star = uninterrupted(max_epochs)
    run = [*MATRIX_RUN, f"trainer.max_epochs={max_epochs}", f"probes.reference.ckpt={x_star}"]
    first = make_cfg([*run, f"trainer.max_steps={stop}"], name="split")
    train(first)
    job = JobFolder(first.paths.output_dir)
    train(
        make_cfg([*run, f"trainer.max_steps={STEPS}", f"ckpt_path={job.last_checkpoint}"], "split")
    )
    compared = assert_same_steps(full.path, job.path, STEPS)
    families = {k.split("/")[0] for k in compared}
    assert families == {"train", "step", "step_fresh", "noise", "curv", "ref"}
    assert {"step/curv_dir", "ref/gap", "noise/trace_cov", "curv/lambda_max"} <= compared
    assert job.read_verdicts() == full.read_verdicts()
    held = {n: p.get("held") for n, p in job.read_summary()["probes"].items()}
    assert held == {n: p.get("held") for n, p in full.read_summary()["probes"].items()}
    assert job.read_summary()["probes"]["reference"]["replay"]["matches"]


def test_resume_in_float64_is_exact(make_cfg):
    """With float64 weights every logged value is equal bit for bit (Lightning restores the
    weights before it converts the network to float64: optprobe converts it first)."""
    run = [*MATRIX_RUN, f"trainer.max_epochs={FINITE}", "trainer.precision=64-true"]
    full = make_cfg([*run, f"trainer.max_steps={STEPS}"], name="full")
    train(full)
    run.append(f"probes.reference.ckpt={full.probes.reference.ckpt}")
    first = make_cfg([*run, "trainer.max_steps=3"], name="split")
    train(first)
    job = JobFolder(first.paths.output_dir)
    train(
        make_cfg([*run, f"trainer.max_steps={STEPS}", f"ckpt_path={job.last_checkpoint}"], "split")
    )
    assert_same_steps(Path(full.paths.output_dir), job.path, STEPS, rel=0)
    assert job.read_verdicts() == JobFolder(full.paths.output_dir).read_verdicts()


def test_resume_that_cannot_train_is_refused_and_keeps_the_metrics(make_cfg):
    """The README's old recipe: a finished epoch-limited run resumed with only
    trainer.max_steps raised trains nothing; that fails, naming the limit, and the summary
    keeps the metrics it had."""
    run = ["debug=smoke", "probes=none", "data.max_train_samples=32", "trainer.max_epochs=2"]
    run += ["trainer.max_steps=-1", "trainer.val_check_interval=null"]
    first = make_cfg(run, name="job")
    train(first)  # 2 epochs of 2 steps
    job = JobFolder(first.paths.output_dir)
    before = job.read_summary()
    assert before["global_step"] == 4 and before["metrics"]["val/acc"] >= 0
    resume = [*run, "trainer.max_steps=20", f"ckpt_path={job.last_checkpoint}"]
    with pytest.raises(ValueError, match=r"trained no further step: trainer.max_epochs=2"):
        train(make_cfg(resume, name="job"))
    after = job.read_summary()
    assert after["status"] == "failed"
    assert "trainer.max_epochs=-1" in after["error"] and "at step 4" in after["error"]
    assert after["metrics"] == before["metrics"]
    # the recipe as the README now gives it trains the steps asked for
    train(make_cfg([*resume, "trainer.max_epochs=-1"], name="job"))
    assert job.read_summary()["global_step"] == 20
    assert sorted(metric_rows(job.path)) == list(range(20))
    assert set(before["metrics"]) <= set(job.read_summary()["metrics"])


REFERENCE_RUN = ["debug=smoke", "probes=reference", "model=logreg", "trainer.max_epochs=-1"]


def test_resume_that_would_change_x_star_is_refused_before_a_reference_run(make_cfg):
    """x* comes from a reference run keyed by the trajectory settings (trainer.max_steps
    among them): a job run to 4 steps and resumed to 8 would compare its first steps with
    the 4-step end and the rest with the 8-step end. Refused, naming both; keeping the
    recorded x* by hand resumes, and the replay check says the run no longer ends there."""
    first = make_cfg([*REFERENCE_RUN, "trainer.max_steps=4"], name="job")
    train(first)
    job, x_star = JobFolder(first.paths.output_dir), first.probes.reference.ckpt
    reference_runs = sorted((job.path / "reference_runs").iterdir())
    resume = [*REFERENCE_RUN, "trainer.max_steps=8", f"ckpt_path={job.last_checkpoint}"]
    with pytest.raises(ValueError, match=r"measured ref/\* against x\*") as err:
        train(make_cfg(resume, name="job"))
    assert str(Path(x_star).resolve()) in str(err.value)
    assert f"probes.reference.ckpt={Path(x_star).resolve()}" in str(err.value)
    assert first.probes.reference.fingerprint in str(err.value)
    assert sorted((job.path / "reference_runs").iterdir()) == reference_runs  # none was run
    train(make_cfg([*resume, f"probes.reference.ckpt={x_star}"], name="job"))
    summary = job.read_summary()
    assert summary["status"] == "completed" and summary["global_step"] == 8
    assert not summary["probes"]["reference"]["replay"]["matches"]


def test_resume_with_another_x_star_by_hand_is_refused(make_cfg):
    first = make_cfg([*REFERENCE_RUN, "trainer.max_steps=4"], name="job")
    train(first)
    job = JobFolder(first.paths.output_dir)
    other = make_cfg(["debug=smoke", "probes=none", "model=logreg", "trainer.max_steps=2"])
    train(other)  # its last.ckpt fits the model but is another point
    resume = [*REFERENCE_RUN, "trainer.max_steps=8", f"ckpt_path={job.last_checkpoint}"]
    resume.append(f"probes.reference.ckpt={JobFolder(other.paths.output_dir).last_checkpoint}")
    with pytest.raises(ValueError, match=r"the resumed checkpoint measured ref/\* against"):
        train(make_cfg(resume, name="job"))
    assert job.read_summary()["status"] == "failed"
