"""A job's verdicts are one thing: the probes' running fractions online, ``verdicts.json``
from the metrics in memory and a recomputation from ``metrics.csv`` offline agree, assumption
by assumption; ``logger=none`` still gets its verdicts. The job runs AdamW, so every variant,
the optimizer-geometry ones (‖·‖_P with P = √v̂ + ε) included, is judged."""

from __future__ import annotations

import pytest

from optprobe.analysis.verdicts import read_metrics_csv, verdict_from_metrics
from optprobe.assumptions import ASSUMPTIONS, all_variants
from optprobe.run.folder import JobFolder
from optprobe.run.job import train

RUN = [
    "debug=smoke",
    "optimizer=adamw",
    "probes=full",
    "probes.curvature.every_n_steps=3",
    "probes.curvature.lanczos_iters=5",
    "probes.curvature.trace_max_matvecs=2",
    "probes.curvature.esd=false",
    "probes.noise.every_n_steps=1",
    "trainer.max_steps=12",
    "data.max_train_samples=256",
]


@pytest.fixture(scope="module")
def job(tmp_path_factory, compose_cfg) -> JobFolder:
    cfg = compose_cfg(RUN, tmp_path_factory.mktemp("job"))
    train(cfg)
    return JobFolder(cfg.paths.output_dir)


def test_online_offline_and_in_memory_verdicts_agree(job):
    saved = {a["id"]: a for a in job.read_verdicts()["assumptions"]}
    offline = verdict_from_metrics(read_metrics_csv(job.metrics))
    assert {a.assumption for a in offline.assumptions} == set(ASSUMPTIONS)  # all 7 checked
    # probes=full runs both batch schemes and AdamW has a geometry: every variant is judged
    assert [a.id for a in offline.assumptions] == [v.id for v in all_variants()]
    assert list(saved) == [a.id for a in offline.assumptions]
    for verdict in offline.assumptions:  # verdicts.json (in memory) == metrics.csv (offline)
        mine = saved[verdict.id]
        assert (mine["held"], mine["checked"]) == (verdict.held, verdict.checked)
        assert mine["fraction"] == pytest.approx(verdict.fraction, abs=0)
        assert mine["interval_method"] == "wilson_ess_geyer"
    summary = job.read_summary()
    online = {}
    for probe in summary["probes"].values():
        online.update(probe.get("held", {}))
    judged_online = [v for v in all_variants() if v.assumption.kind == "sign" and v.online]
    assert set(online) == {v.id for v in judged_online}
    metrics = read_metrics_csv(job.metrics)
    for v in judged_online:  # the probes' own running counters and their last logged fraction
        verdict = offline.get(v.id)
        assert (online[v.id]["held"], online[v.id]["checked"]) == (verdict.held, verdict.checked)
        last = metrics[v.running_key].dropna().iloc[-1]
        assert last == pytest.approx(verdict.fraction, abs=1e-12)
    # the summary's verdicts (which feed the job and sweep tables) are the same numbers
    assert summary["verdicts"]["assumptions"] == job.read_verdicts()["assumptions"]


def test_logger_none_still_writes_the_same_verdicts(job, make_cfg):
    cfg = make_cfg([*RUN, "logger=none"])
    train(cfg)
    folder = JobFolder(cfg.paths.output_dir)
    assert not folder.metrics.exists()  # no logger, no metrics.csv
    assert folder.read_verdicts() is not None
    assert folder.read_verdicts()["assumptions"] == job.read_verdicts()["assumptions"]


def test_resume_keeps_the_verdicts_of_the_whole_run(make_cfg):
    """The in-memory history travels in the checkpoint: a job stopped at step 6 and resumed
    to step 12 has the verdicts of the uninterrupted job, even without a metrics file."""
    run = [*RUN, "logger=none", "probes.reference=null", "trainer.max_epochs=-1"]
    whole = make_cfg(run, name="whole")
    train(whole)
    first = make_cfg([*run, "trainer.max_steps=6"], name="resumed")
    train(first)
    ckpt = JobFolder(first.paths.output_dir).last_checkpoint
    train(make_cfg([*run, f"ckpt_path={ckpt}"], name="resumed"))
    resumed = JobFolder(first.paths.output_dir).read_verdicts()
    assert resumed["probed"]["step"] == 12
    assert (
        resumed["assumptions"] == JobFolder(whole.paths.output_dir).read_verdicts()["assumptions"]
    )


def test_resume_with_other_probes_says_which_steps_the_verdicts_cover(make_cfg):
    """Resumed with probes=none, the job's verdicts are those of the steps its probes ran on
    (0-5), and verdicts.json and the summary say so: the run has 12 steps, unprobed from 6."""
    run = [*RUN, "logger=none", "probes.reference=null", "trainer.max_epochs=-1"]
    first = make_cfg([*run, "trainer.max_steps=6"], name="job")
    train(first)
    job = JobFolder(first.paths.output_dir)
    probed = job.read_verdicts()
    assert "coverage" not in probed
    unprobed = [o for o in run if not o.startswith("probes")]  # debug, data, trainer, logger
    resume = [*unprobed, "probes=none", f"ckpt_path={job.last_checkpoint}"]
    train(make_cfg(resume, name="job"))
    verdicts = job.read_verdicts()
    assert verdicts["probed"]["step"] == 6
    assert verdicts["assumptions"] == probed["assumptions"]
    coverage = verdicts["coverage"]
    assert coverage["steps"] == 12
    assert coverage["segments"] == [
        {"first_step": 0, "probes": ["curvature", "noise", "step", "step_fresh"]},
        {"first_step": 6, "probes": []},
    ]
    assert "probes changed" in coverage["note"]
    assert job.read_summary()["verdicts"] == verdicts
