"""Checks that stop bad runs early, with messages that name the problem and the fix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

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


def make_writable_dir(path: str | Path) -> None:
    """Create the folder ``path`` (and parents) and check a file can be written in it, or raise
    a PermissionError that names the folder and the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".optprobe-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"output folder {path} is not writable ({err.strerror or err}); point runs at a "
            "folder you can write, e.g. paths.log_dir=$HOME/optprobe-logs (or set "
            "OPTPROBE_LOG_DIR), or fix the folder's permissions"
        ) from err


class OutputDirCheck(HydraCallback):
    """Hydra callback: stop before any job starts when the run or sweep folder is not writable.

    Exits (SystemExit) with the message: Hydra turns exceptions of callbacks into warnings.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        try:
            make_writable_dir(folder)
        except PermissionError as err:
            raise SystemExit(f"Error: {err}") from err


def config_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config that must match when resuming."""
    return {k: resolved.get(k) for k in RESUME_KEYS}


def check_resume_compatible(ckpt_path: str, resolved: dict[str, Any]) -> None:
    """Fail before training when ``ckpt_path`` was written by a run with another config."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    saved = checkpoint.get("optprobe_config")
    if saved is None:
        return  # not written by optprobe: Lightning's own checks apply
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


class NonFiniteLossGuard(Callback):
    """Record a NaN/inf training loss; stop the run (``action=stop``) or go on (``continue``).

    The step and the count are written to the job's summary.json (``non_finite_loss``);
    everything the run wrote so far is kept, and the last checkpoint is not overwritten by
    a non-finite state when stopping.
    """

    def __init__(self, action: str = "stop") -> None:
        if action not in ("stop", "continue"):
            raise ValueError(
                f"callbacks.non_finite.action must be 'stop' or 'continue', got {action!r}"
            )
        self.action = action
        self.count = 0
        self.first_step: int | None = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or torch.isfinite(loss).all():
            return
        self.count += 1
        if self.first_step is None:
            self.first_step = trainer.global_step - 1  # the optimizer step that just ran
            print(f"non-finite training loss at step {self.first_step} ({self.action})")
        if self.action == "stop":
            trainer.should_stop = True

    def summary(self) -> dict[str, Any] | None:
        if not self.count:
            return None
        return {"count": self.count, "first_step": self.first_step, "action": self.action}

    @property
    def state_key(self) -> str:
        return "optprobe.NonFiniteLossGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first_step": self.first_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count, self.first_step = state_dict["count"], state_dict["first_step"]
