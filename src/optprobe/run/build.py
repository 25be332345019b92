"""Instantiate every object of a job from its config: data, model, callbacks, probes, loggers,
trainer. Nothing is trained here."""

from __future__ import annotations

import sys
from typing import Any

import hydra
import pytorch_lightning as pl
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from omegaconf import DictConfig, open_dict

from optprobe.callbacks.interruption import InterruptionCheckpoint
from optprobe.callbacks.progress import ProgressLine
from optprobe.models.lit_module import TrainingModule
from optprobe.probes.base import ProbeCallback
from optprobe.rank import is_primary
from optprobe.run.history import MetricHistory
from optprobe.run.wall_clock import WallClock

BUDGET_TARGET = "optprobe.callbacks.budget.OverheadBudget"


def expand_shorthands(cfg: DictConfig) -> None:
    """Rewrite command-line shorthands into the config they stand for (in place).

    ``probes.budget=<fraction>`` (or the ``budget`` entry of conf/probes/budget.yaml) is the
    overhead budget, a callback: it moves to ``callbacks.budget``, so ``probes`` holds probes
    only.
    """
    probes = cfg.get("probes")
    if not probes or "budget" not in probes:
        return
    with open_dict(cfg):
        budget = probes.pop("budget")
        if budget is None:
            return
        if cfg.get("callbacks") is None:
            cfg.callbacks = {}
        if isinstance(budget, (int, float)) and not isinstance(budget, bool):
            budget = {"_target_": BUDGET_TARGET, "budget": budget}
        cfg.callbacks.budget = budget


def instantiate_named(group: DictConfig | dict | None, kind: str, **kwargs: Any) -> list[Any]:
    """Instantiate every non-null entry of a ``name: {_target_: ...}`` mapping.

    A null entry (``probes.curvature=null`` on the command line) is skipped, so each item is
    removable. An entry without ``_target_`` is an error naming ``<kind>.<name>``. Keyword
    arguments whose value is the string ``"<name>"`` receive the entry's name.
    """
    if not group:
        return []
    objects = []
    for name, entry in group.items():
        if entry is None:
            continue
        if not isinstance(entry, (DictConfig, dict)) or "_target_" not in entry:
            raise ValueError(
                f"{kind}.{name} must be a mapping with a _target_ (or null to turn it off), "
                f"got {entry!r}"
            )
        extra = {k: (name if v == "<name>" else v) for k, v in kwargs.items()}
        objects.append(hydra.utils.instantiate(entry, **extra))
    return objects


def trainer_plugins(own_ranks: bool) -> dict[str, Any]:
    """Cluster environment: ours when optprobe starts the DDP ranks itself (even inside a
    SLURM job); inside SLURM otherwise, without Lightning's requeue (``PreemptionCheckpoint``
    requeues at a step boundary)."""
    if own_ranks:
        return {"plugins": [LightningEnvironment()]}
    if SLURMEnvironment.detect():
        return {"plugins": [SLURMEnvironment(auto_requeue=False)]}
    return {}


def progress_display(cfg: DictConfig) -> tuple[list[pl.Callback], dict[str, Any]]:
    """How ``trainer.enable_progress_bar=true`` shows progress: Lightning's bar on a terminal,
    a ``ProgressLine`` now and then when standard output is a file or a pipe (a batch log).
    Returns (extra callbacks, trainer keyword overrides)."""
    if not cfg.trainer.get("enable_progress_bar", True) or sys.stdout.isatty():
        return [], {}
    return [ProgressLine()], {"enable_progress_bar": False}


def build(cfg: DictConfig, own_ranks: bool = False, started: float | None = None) -> dict[str, Any]:
    """Every object of a job: ``datamodule``, ``module``, ``trainer``, ``loggers`` (rank 0
    only), ``history`` (everything logged, rank 0; None elsewhere) and ``clock`` (the job's
    wall time since ``started``, a ``time.perf_counter`` value, and over earlier segments).
    The trainer always has an ``InterruptionCheckpoint`` and the clock (and, on rank 0, the
    history) besides the configured callbacks; a ``ProgressLine`` when a progress bar is
    asked for and standard output is not a terminal.

    Probes are the entries of ``cfg.probes``; each gets its entry name (its identity).
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
    callbacks += instantiate_named(cfg.get("probes"), "probes", name="<name>")
    callbacks.append(InterruptionCheckpoint())  # every job: signals stop it at a step's end
    clock = WallClock(started)  # the job's wall time over its segments (checkpointed)
    callbacks.append(clock)
    loggers = instantiate_named(cfg.get("logger"), "logger") if is_primary() else []
    history = MetricHistory() if is_primary() else None
    if history is not None:
        callbacks.append(history)
    progress_callbacks, progress_args = progress_display(cfg)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks + progress_callbacks,
        logger=[*loggers, history] if history is not None else False,
        **trainer_plugins(own_ranks),
        **progress_args,
    )
    return {
        "datamodule": datamodule,
        "module": module,
        "trainer": trainer,
        "loggers": loggers,
        "history": history,
        "clock": clock,
    }


def probes_of(trainer: pl.Trainer) -> list[ProbeCallback]:
    """The probe callbacks of a trainer, in order."""
    return [c for c in trainer.callbacks if isinstance(c, ProbeCallback)]
