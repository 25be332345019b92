"""Obtain x* for the reference probe: run (or reuse) the same config without probes."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from optprobe.log import say
from optprobe.probes.reference import x_star_changed
from optprobe.run import locks
from optprobe.run.checkpoint_files import checkpoint_problem
from optprobe.run.folder import REFERENCE_RUNS_DIR, JobFolder

# Config parts that determine the training trajectory (and so x*).
TRAJECTORY_KEYS = ("data", "model", "optimizer", "scheduler", "seed")
TRAINER_KEYS = (
    "max_steps",
    "max_epochs",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "precision",
    "limit_train_batches",
    "accelerator",
    "devices",
    "strategy",
)


def trajectory_fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything that determines the trajectory (not probes or loggers)."""
    parts = {k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in TRAJECTORY_KEYS}
    parts["trainer"] = {k: cfg.trainer.get(k) for k in TRAINER_KEYS}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reference_root(cfg: DictConfig, fingerprint: str | None = None) -> Path:
    """``<log_dir>/reference_runs/<fingerprint>``: the folder of the reference run of
    ``cfg``'s trajectory (``fingerprint``: its trajectory fingerprint, when known)."""
    fingerprint = fingerprint or trajectory_fingerprint(cfg)
    return Path(cfg.paths.log_dir).resolve() / REFERENCE_RUNS_DIR / fingerprint


def reference_config(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """``cfg`` without probes or W&B, writing to ``output_dir`` with a last.ckpt."""
    ref = copy.deepcopy(cfg)
    with open_dict(ref):
        ref.probes = {}
        ref.paths.output_dir = str(output_dir)
        ref.logger = {
            "csv": {
                "_target_": "optprobe.run.run_store.RunStoreLogger",
                "save_dir": str(output_dir),
            }
        }
        ref.callbacks = {
            "checkpoint": {
                "_target_": "pytorch_lightning.callbacks.ModelCheckpoint",
                "dirpath": str(JobFolder(output_dir).checkpoints),
                "save_last": True,
                "save_top_k": 0,
            }
        }
        ref.ckpt_path = None
    return ref


def recorded_x_star(ckpt_path: str | Path, probe_name: str = "reference") -> dict[str, Any] | None:
    """The x* a job's checkpoint measured ``ref/*`` against (its reference probe's record),
    or None (no such probe state, an older checkpoint, or a file that cannot be read: the
    checks of ``ckpt_path`` report that)."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
        state = checkpoint["callbacks"][f"optprobe.probe.{probe_name}"]
        return state["extra"].get("x_star") or None
    except Exception:
        return None


def check_reference_resume(cfg: DictConfig, fingerprint: str) -> None:
    """Refuse, before any reference run, a resume whose x* would not be the one its
    checkpoint measured against: the checkpoint's reference run had another fingerprint."""
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    recorded = recorded_x_star(ckpt_path)
    if recorded and recorded.get("fingerprint") and recorded["fingerprint"] != fingerprint:
        x_star = JobFolder(reference_root(cfg, fingerprint)).last_checkpoint
        now = {"ckpt": str(x_star), "fingerprint": fingerprint}
        raise ValueError(x_star_changed(f"ckpt_path={ckpt_path}", recorded, now))


def cache_problem(folder: JobFolder) -> str | None:
    """None when ``folder`` holds a completed reference run with a readable x*, else why not."""
    try:
        summary = folder.read_summary()
    except (OSError, ValueError) as err:
        return f"its summary.json cannot be read: {err}"
    if summary is None or summary.get("status") != "completed":
        status = None if summary is None else summary.get("status")
        return f"the run did not complete (status {status!r})"
    if not folder.last_checkpoint.is_file():
        return "it has no checkpoints/last.ckpt"
    problem = checkpoint_problem(folder.last_checkpoint)
    return None if problem is None else f"its checkpoints/last.ckpt is damaged ({problem})"


def obtain_reference(cfg: DictConfig, train: Callable[[DictConfig], Any]) -> str:
    """Path of x* for ``cfg``: reuse a completed reference run with the same trajectory
    fingerprint under ``<log_dir>/reference_runs/``, or run it now with ``train`` (same seed,
    same data order, no probes). Returns the checkpoint path.

    One process at a time looks at and writes an entry (``reference_runs/<hash>.lock``; the
    others wait, then reuse it). An entry that cannot be used (an incomplete or failed run, an
    unreadable summary or checkpoint) is deleted and run again."""
    root = reference_root(cfg)
    folder = JobFolder(root)
    with locks.waiting_lock(root.with_name(root.name + ".lock"), f"reference run {root}"):
        if root.exists():
            problem = cache_problem(folder)
            if problem is None:
                say(f"reference probe: reusing x* from {folder.last_checkpoint}")
                return str(folder.last_checkpoint)
            say(
                f"reference probe: the cached reference run {root} is unusable ({problem}); "
                "rebuilding it"
            )
            shutil.rmtree(root)
        say(f"reference probe: running the reference run (same config, no probes) in {root}")
        root.mkdir(parents=True, exist_ok=True)
        train(reference_config(cfg, root))
    return str(folder.last_checkpoint)
