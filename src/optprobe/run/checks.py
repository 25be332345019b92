"""Checks that stop a bad job before training, with messages that name the problem and the fix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from optprobe.run.checkpoint_files import load_checkpoint

# config parts a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = ("data", "model", "optimizer", "scheduler", "seed")


def check_config(cfg: DictConfig) -> None:
    """Reject values that would only fail (or silently mislead) after training started."""
    lr = cfg.optimizer.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(
            f"optimizer.lr must be a positive number, got {lr!r}; e.g. optimizer.lr=0.1"
        )
    ckpt = cfg.get("ckpt_path")
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt} does not exist; resume with ckpt_path=<job folder>/checkpoints/last.ckpt"
        )


def config_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config that must match when resuming."""
    return {k: resolved.get(k) for k in RESUME_KEYS}


def check_resume_compatible(ckpt_path: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """Fail before training when ``ckpt_path`` was written by a run with another config;
    returns the loaded checkpoint."""
    checkpoint = load_checkpoint(ckpt_path)
    saved = checkpoint.get("optprobe_config")
    if saved is None:
        return checkpoint  # not written by optprobe: Lightning's own checks apply
    current = config_fingerprint(resolved)
    differ = [k for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if differ:
        detail = "; ".join(
            f"{k}: checkpoint {saved.get(k)} vs now {current.get(k)}" for k in differ
        )
        raise ValueError(
            f"ckpt_path={ckpt_path} comes from a run with another config ({detail}). Resume with "
            "the same data/model/optimizer/scheduler/seed (only trainer settings such as "
            "trainer.max_steps may change), or start a new run without ckpt_path"
        )
    return checkpoint


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


def check_resume_trained(ckpt_path: str, resume_step: int, trainer: pl.Trainer) -> None:
    """Fail a resume that trained no step, naming the limit that was already reached (a
    finished run resumed with only ``trainer.max_steps`` raised, under the default finite
    ``trainer.max_epochs``, trains nothing)."""
    if trainer.global_step > resume_step:
        return
    limits = []
    if trainer.max_steps not in (None, -1) and trainer.max_steps <= resume_step:
        limits.append(f"trainer.max_steps={trainer.max_steps}")
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        limits.append(
            f"trainer.max_epochs={trainer.max_epochs} (the checkpoint has finished epoch "
            f"{trainer.current_epoch})"
        )
    reached = " and ".join(limits) or "the trainer's limits"
    raise ValueError(
        f"ckpt_path={ckpt_path} is at step {resume_step} and this resume trained no further "
        f"step: {reached} had already been reached. Resume with trainer.max_steps above "
        f"{resume_step} and trainer.max_epochs=-1 (train until max_steps) or a larger "
        "trainer.max_epochs; the checkpoint is unchanged"
    )
