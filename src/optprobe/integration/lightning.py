"""The probes on any LightningModule: ``Trainer(callbacks=lightning_probes(net=..., loss=...))``.

The probes find the network and the loss through a :class:`~optprobe.probes.target.ProbeTarget`;
a :class:`RunRecorder` keeps what they log and writes the job folder at the end of ``fit``
(``<trainer.log_dir>/optprobe``, or ``folder``), with the verdicts; ``optprobe-analyze`` on
the folder above it (``lightning_logs/``) reads every such run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from optprobe.dist import rank_mean
from optprobe.integration.probe_set import ProbeChoice, build_probes
from optprobe.integration.run_folder import LOSS_KEY, LossRecorder, run_config, write_run_folder
from optprobe.probes.base import ProbeCallback
from optprobe.probes.target import LossSpec, NetSpec, ProbeTarget
from optprobe.run.history import MetricHistory

FOLDER_NAME = "optprobe"
"""The job folder's name inside the trainer's log folder."""


class RunRecorder(Callback):
    """Keeps every value logged during fit (it joins the trainer's loggers), logs
    ``train/loss`` (the loss backpropagated in each optimizer step, nats), and writes the job
    folder when fit ends or fails. Its history is checkpointed, so a resumed fit's verdicts
    cover the steps before the resume."""

    def __init__(self, folder: str | Path | None = None, config: dict[str, Any] | None = None):
        super().__init__()
        self.folder = Path(folder) if folder is not None else None
        self.config = dict(config or {})
        self.history = MetricHistory()
        self.losses = LossRecorder()
        self._written = False
        self._stepped = False

    @property
    def state_key(self) -> str:
        return "optprobe.RunRecorder"

    def resolve_folder(self, trainer: pl.Trainer) -> Path:
        """``folder``, else ``<trainer.log_dir>/optprobe`` (a new, time-stamped folder under
        ``default_root_dir/optprobe`` when the trainer has no logger)."""
        if self.folder is not None:
            return self.folder
        if trainer.loggers[:1] and trainer.loggers[0] is not self.history and trainer.log_dir:
            return Path(trainer.log_dir) / FOLDER_NAME
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f".{time.time_ns() // 1000 % 1_000_000:06d}"
        return Path(trainer.default_root_dir) / FOLDER_NAME / stamp

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.folder = self.resolve_folder(trainer)
        self._written = False
        if trainer.is_global_zero and self.history not in trainer.loggers:
            trainer.loggers = [*trainer.loggers, self.history]

    @override
    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.losses.add(loss)

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._stepped = True

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._stepped:  # a micro-batch of gradient accumulation
            return
        self._stepped = False
        loss = float(rank_mean(torch.tensor(self.losses.take(), device=pl_module.device)))
        if trainer.is_global_zero:
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            self.history.log_metrics({LOSS_KEY: loss}, step=step)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, None)

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._write(trainer, pl_module, exception)

    def _write(self, trainer, pl_module, error: BaseException | None) -> None:
        if self._written or not trainer.is_global_zero or self.folder is None:
            return
        self._written = True
        probes = [c for c in trainer.callbacks if isinstance(c, ProbeCallback)]
        net = probes[0].model.net if probes and probes[0].model is not None else pl_module
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        config = run_config(net, optimizer, self.config)
        write_run_folder(self.folder, self.history, probes, config, trainer.global_step, error)

    def state_dict(self) -> dict[str, Any]:
        return self.history.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict)


def lightning_probes(
    net: NetSpec = "net",
    loss: LossSpec = "probe_loss",
    probes: ProbeChoice | None = None,
    folder: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> list[Callback]:
    """The probe callbacks and their recorder, for ``pl.Trainer(callbacks=...)``.

    Args:
        net: the attribute of the LightningModule holding the network its training step calls
            (``"model"``), or a function of the module returning it.
        loss: ``loss(net, batch) -> scalar``: the loss the training step backpropagates, of
            the network it is given, on a batch as the training step receives it (a tuple, a
            dict, a Hugging Face batch; examples along dim 0), penalties included; or the name
            of a method of the module with that signature. Checked on the first step.
        probes: probe names (``["step", "curvature", "noise"]``, the default) or name ->
            keyword arguments of the probe (``{"curvature": {"every_n_steps": 10}}``).
        folder: the job folder (default: ``<trainer.log_dir>/optprobe``).
        config: what the run's config.yaml records besides what is read off the network and
            optimizer (e.g. ``{"seed": 0, "choices": {"data": "openwebtext"}}``).
    """
    target = ProbeTarget(net=net, loss=loss)
    return [*build_probes(probes, target), RunRecorder(folder=folder, config=config)]
