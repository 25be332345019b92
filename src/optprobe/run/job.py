"""``train(cfg)``: one job, in three steps that each fit on a screen.

- ``prepare``: check the config and obtain x* for the reference probe (after ``open_job``
  created the job folder and its "running" summary);
- ``fit``: build every object, check that model and data fit and that a resume is
  compatible, save the resolved config, start the DDP ranks, train;
- ``finalize``: the final summary, the verdicts (from the metrics in memory) and the tables.

Rank 0 always leaves ``summary.json``; the other ranks of a DDP job write nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from optprobe.analysis.verdicts import read_metrics_csv, verdict_table
from optprobe.callbacks.interruption import (
    handled_interruption,
    interruption_record,
    raise_if_interrupted,
)
from optprobe.callbacks.non_finite import NonFiniteLossGuard
from optprobe.callbacks.preemption import PreemptionCheckpoint
from optprobe.log import say, warn
from optprobe.rank import is_primary
from optprobe.run.build import build, expand_shorthands, probes_of
from optprobe.run.checks import (
    check_config,
    check_model_fits_data,
    check_resume_compatible,
    check_resume_trained,
    config_fingerprint,
)
from optprobe.run.ddp import WORKER_FLAG, DDPWorkers, ddp_process_count
from optprobe.run.folder import JobFolder, make_writable_dir
from optprobe.run.history import MetricHistory
from optprobe.run.hydra_context import hydra_choices, in_multirun
from optprobe.run.input_checks import check_job_inputs
from optprobe.run.ownership import claim_job_folder, release_job_folder
from optprobe.run.quiet import quiet_lightning
from optprobe.run.reference_run import (
    check_reference_resume,
    obtain_reference,
    trajectory_fingerprint,
)
from optprobe.run.signals import Interrupted, watching_signals
from optprobe.run.summary import start_summary, to_float_dict
from optprobe.run.sweep_table import format_table, job_row
from optprobe.run.verdict import job_verdict, verdict_payload


@dataclass
class Job:
    """One job on its way: config, folder, rank role, summary so far, objects once built."""

    cfg: DictConfig
    folder: JobFolder
    primary: bool
    processes: int
    summary: dict[str, Any]
    objects: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    resume_step: int | None = None  # the step of ckpt_path (rank 0, when resuming)
    started: float = field(default_factory=time.perf_counter)  # this segment's start


def open_job(cfg: DictConfig) -> Job:
    """The job of ``cfg``; rank 0 creates its folder and writes the "running" summary."""
    worker = os.environ.get(WORKER_FLAG) == "1"
    processes = 1 if worker else ddp_process_count(cfg.trainer)
    folder = JobFolder(cfg.paths.output_dir)
    job = Job(cfg, folder, is_primary(), processes, start_summary(cfg, processes))
    if job.primary:
        make_writable_dir(folder.path)
        claim_job_folder(folder.path, cfg.get("ckpt_path"))  # before a file is written
        keep_resumed_metrics(job)
        folder.write_summary(job.summary)
    return job


def keep_resumed_metrics(job: Job) -> None:
    """A job resumed into its folder starts with the metrics its summary had."""
    try:
        previous = job.folder.read_summary() if job.cfg.get("ckpt_path") else None
    except (OSError, ValueError):  # unreadable: nothing to keep
        previous = None
    if previous and previous.get("metrics"):
        job.summary["metrics"] = previous["metrics"]


def prepare(job: Job) -> None:
    """Expand shorthands, obtain x* when the reference probe needs it, check the config."""
    cfg = job.cfg
    expand_shorthands(cfg)
    check_job_inputs(cfg)
    reference = (cfg.get("probes") or {}).get("reference")
    if reference is not None and not reference.get("ckpt"):
        if not job.primary:
            raise ValueError(
                "probes.reference.ckpt is null in a rank started by another launcher "
                "(torchrun, srun -n N): run the reference first and pass "
                "probes.reference.ckpt=<its checkpoints/last.ckpt>"
            )
        fingerprint = trajectory_fingerprint(cfg)
        check_reference_resume(cfg, fingerprint)
        with open_dict(cfg):
            cfg.probes.reference.ckpt = obtain_reference(cfg, train)
            cfg.probes.reference.fingerprint = fingerprint
    check_config(cfg)


def resolved_config(job: Job) -> dict[str, Any]:
    """The config as saved in the job folder: resolved, with the group choices and what each
    probe decided at run time (e.g. the step probe's scheme)."""
    resolved = OmegaConf.to_container(job.cfg, resolve=True)
    resolved["choices"] = hydra_choices()
    for probe in probes_of(job.objects["trainer"]):
        resolved["probes"][probe.name].update(probe.resolved_settings())
    return resolved


def fit(job: Job) -> None:
    """Build, check, record the config, start the other DDP ranks and train."""
    cfg = job.cfg
    own_ranks = job.processes > 1 or os.environ.get(WORKER_FLAG) == "1"
    workers = DDPWorkers(job.processes) if job.processes > 1 else contextlib.nullcontext()
    with workers:
        pl.seed_everything(cfg.seed, workers=True)
        job.objects = build(cfg, own_ranks=own_ranks, started=job.started)
        datamodule, module, trainer = (job.objects[k] for k in ("datamodule", "module", "trainer"))
        datamodule.setup("fit")
        check_model_fits_data(module.net, datamodule, cfg)
        resolved = resolved_config(job)
        module.run_config = config_fingerprint(resolved)
        if job.primary:
            if cfg.get("ckpt_path"):
                checkpoint = check_resume_compatible(cfg.ckpt_path, resolved)
                seed_legacy_history(job, checkpoint)
                job.resume_step = int(checkpoint.get("global_step", 0))
            OmegaConf.save(OmegaConf.create(resolved), job.folder.config)
            for logger in job.objects["loggers"]:
                logger.log_hyperparams(resolved)
        if isinstance(workers, DDPWorkers):
            workers.start(OmegaConf.to_container(cfg, resolve=True))
        # in the trainer's precision before a checkpoint is restored: Lightning restores the
        # weights first, and float64 weights loaded into float32 parameters lose their digits
        trainer.precision_plugin.convert_module(module)
        # our own checkpoints hold callback states and configs, not only tensors
        ckpt_path = cfg.get("ckpt_path")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    if job.resume_step is not None:  # a refused resume keeps the summary's metrics as they were
        check_resume_trained(cfg.ckpt_path, job.resume_step, trainer)
    job.metrics = final_metrics(job)


def final_metrics(job: Job) -> dict[str, float]:
    """The last value of every metric: Lightning's (this run), over the history's ``train/``
    and ``val/`` values (which hold the steps before a resume too), over the metrics the
    summary had when this job resumed; so a resume that validates less never drops one."""
    history = job.objects.get("history")
    earlier = history.last_values(("train/", "val/")) if history is not None else {}
    current = to_float_dict(job.objects["trainer"].callback_metrics)
    return {**job.summary.get("metrics", {}), **earlier, **current}


def seed_legacy_history(job: Job, checkpoint: dict[str, Any]) -> None:
    """A checkpoint from before the history was checkpointed (optprobe < 0.2): take the
    earlier steps from the job folder's metrics.csv, so the verdicts cover the whole run."""
    history = job.objects["history"]
    if (
        MetricHistory.STATE_KEY in checkpoint.get("callbacks", {})
        or not job.folder.metrics.is_file()
    ):
        return
    history.seed(read_metrics_csv(job.folder.metrics), before_step=int(checkpoint["global_step"]))


def finalize(job: Job) -> None:
    """Rank 0: the completed summary (probes, non-finite loss, preemption) and the verdicts."""
    trainer = job.objects["trainer"]
    summary = job.summary
    summary.update(status="completed", metrics=job.metrics, global_step=trainer.global_step)
    summary["probes"] = {p.name: p.final_summary() for p in probes_of(trainer)}
    for guard in (c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard)):
        if guard.summary():
            summary["non_finite_loss"] = guard.summary()
            if guard.action == "stop":
                summary["status"] = "stopped: non-finite loss"
    preempted = [c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)]
    if any(c.preempted_at_step is not None for c in preempted):
        step = next(c.preempted_at_step for c in preempted if c.preempted_at_step is not None)
        summary["status"] = f"preempted at step {step}"  # the resumed run writes the verdicts
        return
    interruption = handled_interruption(trainer)
    if interruption is not None:  # the verdicts of the steps so far; a resume rewrites them
        summary.update(status="interrupted", interruption=interruption)
    record_verdicts(job)


def record_verdicts(job: Job) -> None:
    """verdicts.json and the summary's verdicts from the history (with its coverage when the
    probes changed at a resume); printed as a table."""
    history = job.objects["history"]
    coverage = history.coverage(job.objects["trainer"].global_step)
    verdict = job_verdict(history.frame(), job.folder, job.objects["loggers"], coverage=coverage)
    if verdict is not None:
        job.summary["verdicts"] = verdict_payload(verdict, coverage)
        say(f"\nVerdicts ({job.folder.path}):\n{verdict_table(verdict)}")
        if coverage is not None:
            warn(f"{coverage['note']}: {coverage['segments']}")


def record_wall_time(job: Job) -> None:
    """``wall_time_s``: this segment (a start or a resume); ``wall_time_total_s``: every
    segment, from the checkpointed clock (this segment alone when the job failed before its
    checkpoint was restored)."""
    segment = time.perf_counter() - job.started
    clock = job.objects.get("clock")
    total = clock.total_s() if clock is not None else segment
    job.summary.update(wall_time_s=round(segment, 3), wall_time_total_s=round(total, 3))


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one job; returns (final metrics, objects). Rank 0 always writes ``summary.json``.

    Under ``trainer=ddp`` rank 0 starts the other ranks (``optprobe.cli.ddp_worker``) once the
    config is checked; they train on the same resolved config and write nothing.

    SIGTERM, SIGINT and SIGUSR1 stop the job (``optprobe.run.signals``): status
    ``interrupted`` with the signal, the step and the checkpoint in summary.json, and
    ``Interrupted`` (a SystemExit with code 128 + the signal's number) raised on rank 0.
    """
    quiet_lightning()
    job = open_job(cfg)
    with watching_signals():
        try:
            prepare(job)
            fit(job)
            if job.primary:
                finalize(job)
                raise_if_interrupted(job.objects["trainer"])
            return job.metrics, job.objects
        except Interrupted as err:
            record = interruption_record(job.objects.get("trainer"), err)
            job.summary.update(status="interrupted", interruption=record)
            raise
        except BaseException as err:
            job.summary.update(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            record_wall_time(job)
            if job.primary:
                job.folder.write_summary(job.summary)
                release_job_folder(job.folder.path)


def main(cfg: DictConfig) -> float | None:
    """Hydra entry: train, print the job's summary, always close the W&B run.

    Inside a multirun a failing job does not stop the sweep: its error is printed and kept in
    its summary.json, the other jobs run, and the sweep summary lists it (and exits non-zero).
    """
    try:
        metrics, _ = train(cfg)
        say(format_table([job_row(JobFolder(cfg.paths.output_dir).path)]))
        return metrics.get(cfg.get("optimized_metric") or "train/loss")
    except Exception:
        if not in_multirun():
            raise
        traceback.print_exc()
        say(f"job failed; its folder keeps what it wrote: {cfg.paths.output_dir}")
        return None
    finally:
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()
