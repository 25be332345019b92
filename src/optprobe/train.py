"""``train(cfg)``: compose data, model, optimizer, probes and loggers, fit, write the job folder."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from optprobe.analysis.verdicts import verdict_table
from optprobe.checkpointing import PreemptionCheckpoint
from optprobe.distributed import WORKER_FLAG, DDPWorkers, ddp_process_count, is_primary
from optprobe.guards import (
    NonFiniteLossGuard,
    check_config,
    check_resume_compatible,
    config_fingerprint,
    make_writable_dir,
)
from optprobe.instantiate import instantiate_named
from optprobe.job_verdict import write_job_verdict
from optprobe.models.lit_module import TrainingModule
from optprobe.probes.base import ProbeCallback
from optprobe.reference_run import obtain_reference

SUMMARY_FILE = "summary.json"


def git_commit() -> str | None:
    """The commit of the optprobe checkout that runs (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def hydra_choices() -> dict[str, str]:
    """The config-group options this job was composed from (``optimizer: adam``, ...)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


def check_model_fits_data(net: torch.nn.Module, datamodule: pl.LightningDataModule, cfg) -> None:
    """Run the network on two training examples before training; fail with a clear message."""
    inputs, _ = next(iter(datamodule.train_dataloader()))
    try:
        with torch.no_grad():
            outputs = net(inputs[:2])
    except Exception as err:
        raise ValueError(
            f"model ({cfg.model._target_}) cannot read data ({cfg.data._target_}, inputs "
            f"{tuple(inputs.shape[1:])} {inputs.dtype}): {err}. Pick a matching pair, e.g. "
            "model=gpt with data=shakespeare, model=mlp/logreg/resnet18 with image data."
        ) from err
    if outputs.shape[-1] != datamodule.num_classes:
        raise ValueError(
            f"model outputs {outputs.shape[-1]} classes but the data has {datamodule.num_classes}"
        )


def to_float_dict(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensors and numbers to plain floats (for JSON)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


def write_summary(output_dir: str, payload: dict[str, Any]) -> None:
    """Write ``summary.json`` atomically, so an interrupted write never loses an old summary."""
    path = Path(output_dir) / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def is_preempted(callback: Any) -> bool:
    """True for a PreemptionCheckpoint that stopped this run at a checkpoint."""
    return isinstance(callback, PreemptionCheckpoint) and callback.preempted_at_step is not None


def probes_of(trainer: pl.Trainer) -> list[ProbeCallback]:
    """The probe callbacks of a trainer, in order."""
    return [c for c in trainer.callbacks if isinstance(c, ProbeCallback)]


def probe_name(cfg: DictConfig, probe: ProbeCallback) -> str:
    """The config entry name (``probes.<name>``) of an instantiated probe."""
    target = f"{type(probe).__module__}.{type(probe).__name__}"
    for name, entry in (cfg.get("probes") or {}).items():
        if entry is not None and entry.get("_target_") == target:
            return name
    return probe.family


def build(cfg: DictConfig, own_ranks: bool = False) -> dict[str, Any]:
    """Instantiate every object of a run from its config (nothing is trained).

    Loggers exist on rank 0 only. ``own_ranks``: optprobe starts the DDP ranks itself, so the
    trainer reads them from the environment (even inside a SLURM job).
    """
    datamodule = hydra.utils.instantiate(cfg.data)
    net = hydra.utils.instantiate(cfg.model)
    module = TrainingModule(
        net=net,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        num_classes=datamodule.num_classes,
        task=datamodule.task,
    )
    callbacks = instantiate_named(cfg.get("callbacks"), "callbacks")
    probes_cfg = cfg.get("probes")
    budget = probes_cfg.get("budget") if probes_cfg else None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        # `probes.budget=0.1`: the overhead budget with its defaults
        from optprobe.probes.budget import OverheadBudget

        callbacks.append(OverheadBudget(budget=float(budget)))
        probes_cfg = {k: v for k, v in probes_cfg.items() if k != "budget"}
    callbacks += instantiate_named(probes_cfg, "probes")
    loggers = instantiate_named(cfg.get("logger"), "logger") if is_primary() else []
    if own_ranks:
        extra = {"plugins": [LightningEnvironment()]}
    elif SLURMEnvironment.detect():  # PreemptionCheckpoint requeues, at a step boundary
        extra = {"plugins": [SLURMEnvironment(auto_requeue=False)]}
    else:
        extra = {}
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra
    )
    return {"datamodule": datamodule, "module": module, "trainer": trainer, "loggers": loggers}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one job; returns (final metrics, objects). Rank 0 always writes ``summary.json``.

    Under ``trainer=ddp`` rank 0 starts the other ranks (``optprobe.distributed``) once the
    config is checked; they train on the same resolved config and write nothing.
    """
    from optprobe.wandb_setup import hydra_identity

    primary = is_primary()
    worker = os.environ.get(WORKER_FLAG) == "1"
    processes = 1 if worker else ddp_process_count(cfg.trainer)
    output_dir = cfg.paths.output_dir
    _, overrides = hydra_identity()
    summary: dict[str, Any] = {
        "status": "running",
        "output_dir": str(output_dir),
        "overrides": overrides,
        "git_commit": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "seed": cfg.seed,
        "processes": processes,
        "command": " ".join(sys.argv),
    }
    if primary:
        make_writable_dir(output_dir)
        write_summary(output_dir, summary)
    start = time.perf_counter()
    objects: dict[str, Any] = {}
    try:
        if cfg.get("probes") and cfg.probes.get("reference") and not cfg.probes.reference.ckpt:
            if not primary:
                raise ValueError(
                    "probes.reference.ckpt is null in a rank started by another launcher "
                    "(torchrun, srun -n N): run the reference first and pass "
                    "probes.reference.ckpt=<its checkpoints/last.ckpt>"
                )
            ckpt = obtain_reference(cfg)
            with open_dict(cfg):
                cfg.probes.reference.ckpt = ckpt
        check_config(cfg)
        workers = DDPWorkers(processes) if processes > 1 else contextlib.nullcontext()
        with workers:
            pl.seed_everything(cfg.seed, workers=True)
            objects = build(cfg, own_ranks=processes > 1 or worker)
            datamodule, module, trainer = (objects[k] for k in ("datamodule", "module", "trainer"))
            datamodule.setup("fit")
            check_model_fits_data(module.net, datamodule, cfg)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            resolved["choices"] = hydra_choices()
            module.run_config = config_fingerprint(resolved)
            if primary:
                if cfg.get("ckpt_path"):
                    check_resume_compatible(cfg.ckpt_path, resolved)
                for probe in probes_of(trainer):  # what each probe resolved to (e.g. scheme)
                    resolved["probes"][probe_name(cfg, probe)].update(probe.resolved_settings())
                OmegaConf.save(OmegaConf.create(resolved), Path(output_dir) / "config.yaml")
                for logger in objects["loggers"]:
                    logger.log_hyperparams(resolved)
            if isinstance(workers, DDPWorkers):
                workers.start(OmegaConf.to_container(cfg, resolve=True))
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = to_float_dict(trainer.callback_metrics)
        if not primary:
            return metrics, objects
        summary.update(status="completed", metrics=metrics, global_step=trainer.global_step)
        summary["probes"] = {probe_name(cfg, p): p.final_summary() for p in probes_of(trainer)}
        for guard in (c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard)):
            if guard.summary():
                summary["non_finite_loss"] = guard.summary()
                if guard.action == "stop":
                    summary["status"] = "stopped: non-finite loss"
        preempted = [c.preempted_at_step for c in trainer.callbacks if is_preempted(c)]
        if preempted:  # stopped at a checkpoint; the resumed run writes the verdicts
            summary["status"] = f"preempted at step {preempted[0]}"
            return metrics, objects
        verdict = write_job_verdict(output_dir, objects["loggers"])
        if verdict is not None:
            summary["verdicts"] = verdict.to_dict()
            print(f"\nVerdicts ({output_dir}):\n{verdict_table(verdict)}")
        return metrics, objects
    except BaseException as err:
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        summary["wall_time_s"] = round(time.perf_counter() - start, 3)
        if primary:
            write_summary(output_dir, summary)


def main(cfg: DictConfig) -> float | None:
    """Hydra entry: train, print the job's summary, always close the W&B run.

    Inside a multirun a failing job does not stop the sweep: its error is printed and kept in
    its summary.json, the other jobs run, and the sweep summary lists it (and exits non-zero).
    """
    from optprobe.wandb_setup import in_multirun

    try:
        metrics, _ = train(cfg)
        if is_primary():
            print_job_summary(cfg.paths.output_dir)
        return metrics.get(cfg.get("optimized_metric") or "train/loss")
    except Exception:
        if not in_multirun():
            raise
        traceback.print_exc()
        print(
            f"job failed; its folder keeps what it wrote: {cfg.paths.output_dir}", file=sys.stderr
        )
        return None
    finally:
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()


def print_job_summary(output_dir: str) -> None:
    """Print the final metrics of one job as a short table."""
    from optprobe.sweep_summary import format_table, job_row

    print(format_table([job_row(Path(output_dir))]))
