"""The job folder of a run trained by the user's own code: the same files ``train.py`` writes
(``metrics.csv``, ``config.yaml``, ``summary.json``, ``verdicts.json``), so that
``optprobe-analyze`` reads it beside train.py's runs."""

from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

from optprobe.analysis.verdicts import verdict_table
from optprobe.log import say
from optprobe.probes.base import ProbeCallback
from optprobe.run.folder import JobFolder, make_writable_dir, write_atomically
from optprobe.run.history import MetricHistory
from optprobe.run.verdict import job_verdict, verdict_payload

LOSS_KEY = "train/loss"


def run_config(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    config: dict[str, Any] | None,
) -> dict[str, Any]:
    """What config.yaml records, in train.py's layout so the analysis groups runs alike:
    ``choices.model`` (the network's class), ``choices.optimizer`` (the optimizer's class,
    lower case), ``optimizer.lr`` / ``optimizer.weight_decay`` (its first parameter group),
    then the user's ``config`` on top (nested dicts merged)."""
    derived: dict[str, Any] = {"choices": {"model": type(net).__name__, "data": "custom"}}
    if optimizer is not None:
        group = optimizer.param_groups[0]
        derived["choices"]["optimizer"] = type(optimizer).__name__.lower()
        derived["optimizer"] = {
            k: float(group[k]) for k in ("lr", "weight_decay") if isinstance(group.get(k), float)
        }
    return _merged(derived, config or {})


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


class LossRecorder:
    """``train/loss`` of every optimizer step: the sum of the losses backpropagated in the
    step (Lightning's and the user's micro-batch losses are already divided by the number of
    micro-batches), in nats."""

    def __init__(self) -> None:
        self.parts: list[float] = []

    def add(self, loss: torch.Tensor | float) -> None:
        self.parts.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))

    def take(self) -> float:
        value, self.parts = (math.fsum(self.parts) if self.parts else math.nan), []
        return value


def write_run_folder(
    path: str | Path,
    history: MetricHistory,
    probes: list[ProbeCallback],
    config: dict[str, Any],
    global_step: int,
    error: BaseException | None = None,
) -> JobFolder:
    """Write the job folder of a finished (or failed: ``error``) run and print its verdicts.

    A failed run keeps its metrics and summary (status ``failed``, with the error) and gets
    no verdicts, as train.py's failed jobs do."""
    folder = JobFolder(path)
    make_writable_dir(folder.path)
    frame = history.frame()
    write_atomically(folder.metrics, frame.to_csv(index=False))
    write_atomically(folder.config, yaml.safe_dump(config, sort_keys=False))
    summary: dict[str, Any] = {
        "status": "completed" if error is None else "failed",
        "output_dir": str(folder.path),
        "global_step": int(global_step),
        "metrics": history.last_values(("train/", "val/")),
        "probes": {p.name: p.final_summary() for p in probes},
        "source": "optprobe.integration",
    }
    if error is not None:
        summary["error"] = "".join(traceback.format_exception_only(type(error), error)).strip()
        folder.write_verdicts(None)
    else:
        verdict = job_verdict(frame, folder, loggers=[])
        if verdict is not None:
            summary["verdicts"] = verdict_payload(verdict, None)
            say(f"\nVerdicts ({folder.path}):\n{verdict_table(verdict)}")
    folder.write_summary(summary)
    say(f"optprobe: run written to {folder.path} (optprobe-analyze {folder.path.parent})")
    return folder
