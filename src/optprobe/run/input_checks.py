"""Checks of a job's input before anything trains (also before the reference run): a step
budget that trains nothing, options the optimizer or schedule does not take, checkpoints
that cannot be read. Each message names the problem and the fix."""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

import hydra
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from optprobe.extras import MissingExtraError, missing_target_message
from optprobe.run.checkpoint_files import check_checkpoint
from optprobe.run.folder import JobFolder
from optprobe.run.hydra_context import hydra_choices

# keys of a config entry that Hydra reads itself (not passed to the target)
HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
# arguments the job passes itself (the parameters to optimize; the schedule's optimizer, length)
PASSED_BY_THE_JOB = {"params", "optimizer", "total_steps"}


def check_step_budget(cfg: DictConfig) -> None:
    """``trainer.max_steps=0`` or ``trainer.max_epochs=0`` would train nothing and report a
    completed run without results."""
    steps, epochs = cfg.trainer.get("max_steps"), cfg.trainer.get("max_epochs")
    if isinstance(steps, (int, float)) and (steps == 0 or steps < -1):
        raise ValueError(
            f"trainer.max_steps={steps} trains nothing; give a positive number of optimizer "
            "steps (e.g. trainer.max_steps=1000), or -1 to train for trainer.max_epochs epochs"
        )
    if isinstance(epochs, (int, float)) and (epochs == 0 or epochs < -1):
        raise ValueError(
            f"trainer.max_epochs={epochs} trains nothing; give a positive number of epochs, or "
            "-1 to train until trainer.max_steps"
        )


def unknown_options(group: str, entry: DictConfig | None) -> str | None:
    """The error for keys of ``entry`` (a ``_target_`` config) that its target does not
    take, or None. Targets that take ``**kwargs`` accept anything. A target in a package of an
    extra that is not installed (``optimizer=lion``...) is a :class:`MissingExtraError`
    naming the extra."""
    if not entry or "_target_" not in entry:
        return None
    choice = hydra_choices().get(group)
    missing = missing_target_message(entry._target_, f"{group}={choice}" if choice else None)
    if missing:
        raise MissingExtraError(missing)
    target = hydra.utils.get_method(entry._target_)  # a class or a function
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    valid = [p.name for p in parameters if p.name not in PASSED_BY_THE_JOB | {"self"}]
    unknown = [k for k in entry if k not in HYDRA_KEYS and k not in valid]
    if not unknown:
        return None
    source = f"{entry._target_}" + (f" ({group}={choice})" if choice else "")
    guesses = [g for k in unknown for g in difflib.get_close_matches(k, valid, n=1)]
    hint = f" Did you mean {', '.join(f'{group}.{g}' for g in guesses)}?" if guesses else ""
    keys = ", ".join(f"{group}.{k}" for k in unknown)
    return (
        f"{keys}: not an option of {source}. Its options: {', '.join(valid)}.{hint} Set one "
        f"of those ({group}.<option>=<value>; `+` only adds keys the config lacks), or remove "
        "the unknown key"
    )


def check_options(cfg: DictConfig) -> None:
    """Every key of ``optimizer`` and ``scheduler`` is an argument of its target."""
    for group in ("optimizer", "scheduler"):
        message = unknown_options(group, cfg.get(group))
        if message:
            raise ValueError(message)


def resume_checkpoint(cfg: DictConfig) -> tuple[str, Path] | None:
    """(setting, file) of the checkpoint this job resumes from: ``ckpt_path=``, or in a
    SLURM job without it the last ``hpc_ckpt_<n>.ckpt`` of the job folder (Lightning's choice
    after a requeue)."""
    if cfg.get("ckpt_path"):
        return "ckpt_path", Path(cfg.ckpt_path)
    if SLURMEnvironment.detect():
        requeued = JobFolder(cfg.paths.output_dir).hpc_checkpoints()
        if requeued:
            return "the SLURM requeue checkpoint", requeued[-1]
    return None


def check_checkpoints(cfg: DictConfig) -> None:
    """The checkpoint to resume from and the reference probe's x* can be read."""
    resume = resume_checkpoint(cfg)
    if resume is not None:
        check_checkpoint(*resume)
    reference = (cfg.get("probes") or {}).get("reference")
    if reference is not None and reference.get("ckpt"):
        check_checkpoint("probes.reference.ckpt", reference.ckpt)


def check_job_inputs(cfg: DictConfig) -> None:
    """Every check of this module, in order."""
    check_step_budget(cfg)
    check_options(cfg)
    check_checkpoints(cfg)
