"""The probes in a plain PyTorch training loop (nanoGPT-style), without Lightning::

    probes = LoopProbes(model, loss=lambda net, batch: net(*batch)[1], folder="runs/gpt")
    for batch in batches:
        loss = probes.loss(batch)          # or your own forward: the same loss
        loss.backward()
        with probes.step(batch, loss, optimizer):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    probes.finish()                        # metrics.csv, summary.json, verdicts.json

The probes are the same Lightning callbacks ``train.py`` uses: this module drives their hooks
in Lightning's order (batch start, before backward, before the optimizer step with the raw
gradient in ``.grad``, your update, batch end) through :class:`LoopTrainer`, a stand-in with
only the trainer attributes probes read.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from optprobe.batches import Batch
from optprobe.dist import rank_mean
from optprobe.estimators.functional import BatchLoss
from optprobe.integration.probe_set import ProbeChoice, build_probes
from optprobe.integration.run_folder import LOSS_KEY, LossRecorder, run_config, write_run_folder
from optprobe.probes.target import ProbeTarget
from optprobe.rank import is_primary
from optprobe.run.history import MetricHistory

PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")


class LoopTrainer:
    """The trainer attributes probes read (Lightning's names), kept by :class:`LoopProbes`.

    ``global_step`` counts optimizer steps; the logging step is the same number.
    """

    def __init__(self, history: MetricHistory, folder: Path, precision: str, train_dataloader):
        self.sanity_checking = False
        self.global_step = 0
        self.callbacks: list[Any] = []
        self.loggers = [history]
        self.default_root_dir = str(folder)
        self.precision = precision
        self.datamodule = None
        self.train_dataloader = train_dataloader
        self.optimizers: list[torch.optim.Optimizer] = []
        self.strategy = types.SimpleNamespace(model=None)
        self.fit_loop = types.SimpleNamespace(
            epoch_loop=types.SimpleNamespace(_batches_that_stepped=0)
        )

    @property
    def is_global_zero(self) -> bool:
        return is_primary()

    @property
    def logging_step(self) -> int:
        return self.fit_loop.epoch_loop._batches_that_stepped

    def finish_logging_step(self) -> None:
        """After the batch-end hooks, as Lightning does: the next rows go to the next step."""
        self.fit_loop.epoch_loop._batches_that_stepped = self.global_step


class LoopModule:
    """What the probes' hooks receive as the training module: the network and its loss (read
    through the default :class:`~optprobe.probes.target.ProbeTarget`)."""

    def __init__(self, net: nn.Module, loss: BatchLoss) -> None:
        self.net = net
        self.batch_loss = loss

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def probe_loss(self, net: nn.Module, batch: Batch) -> Tensor:
        return self.batch_loss(net, batch)


class LoopProbes:
    """Probes for a plain training loop; see the module docstring for the loop.

    Args:
        net: the network the loop trains.
        loss: ``loss(net, batch) -> scalar``: the loss you backpropagate, of the network it is
            given, on a batch as your loop holds it (examples along dim 0). Checked on the
            first step against the loss you pass to :meth:`step`.
        probes: probe names or name -> keyword arguments (``lightning_probes``'s).
        folder: the job folder written by :meth:`finish`.
        config: what config.yaml records besides the network's and optimizer's class.
        precision: ``"bf16-mixed"`` / ``"16-mixed"`` when your forward runs under autocast
            (probe passes then recompute the step's loss and gradient in float32).
        train_dataloader: an iterable of batches, needed only by probes with ``batch="fixed"``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: BatchLoss,
        probes: ProbeChoice | None = None,
        folder: str | Path = "optprobe_run",
        config: dict[str, Any] | None = None,
        precision: str = "32-true",
        train_dataloader: Iterable[Batch] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: one of {', '.join(PRECISIONS)}")
        self.folder = Path(folder)
        self.config = config
        self.history = MetricHistory()
        self.module = LoopModule(net, loss)
        self.trainer = LoopTrainer(self.history, self.folder, precision, train_dataloader)
        self.probes = build_probes(probes, ProbeTarget())
        self.trainer.callbacks = list(self.probes)
        self.losses = LossRecorder()
        self._started = False
        self._micro = 0

    def loss(self, batch: Batch) -> Tensor:
        """Your ``loss(net, batch)`` on the live network (a convenience for the loop)."""
        return self.module.batch_loss(self.module.net, batch)

    def _start(self, optimizer: torch.optim.Optimizer) -> None:
        self.trainer.optimizers = [optimizer]
        self.trainer.strategy.model = self.module.net
        for probe in self.probes:
            probe.setup(self.trainer, self.module, "fit")
        for probe in self.probes:
            probe.on_train_start(self.trainer, self.module)
        self._started = True

    def accumulate(self, batch: Batch, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Record one micro-batch of gradient accumulation, after its ``backward``: ``loss``
        is the value you backpropagated (already divided by the number of micro-batches)."""
        if not self._started:
            self._start(optimizer)
        for probe in self.probes:
            probe.on_train_batch_start(self.trainer, self.module, batch, self._micro)
            probe.on_before_backward(self.trainer, self.module, loss)
        self.losses.add(loss)
        self._micro += 1

    @contextlib.contextmanager
    def step(
        self,
        batch: Batch | None,
        loss: Tensor | None,
        optimizer: torch.optim.Optimizer,
    ) -> Iterator[None]:
        """Around your clipping and ``optimizer.step()``, after ``loss.backward()``: the
        probes see x_t and the raw gradient on entry and x_{t+1} on exit. ``batch`` and
        ``loss`` are the step's batch and the loss you backpropagated (None when every
        micro-batch went through :meth:`accumulate`)."""
        if batch is not None:
            if loss is None:
                raise ValueError("step(batch, loss, optimizer): pass the loss you backpropagated")
            self.accumulate(batch, loss, optimizer)
        if self._micro == 0:
            raise ValueError(
                "step(None, None, optimizer) with no micro-batch: pass the step's batch and "
                "loss, or call accumulate(batch, loss, optimizer) after each backward"
            )
        for probe in self.probes:
            probe.on_before_optimizer_step(self.trainer, self.module, optimizer)
        yield
        train_loss = float(rank_mean(torch.tensor(self.losses.take(), device=self.module.device)))
        if self.trainer.is_global_zero:
            self.history.log_metrics({LOSS_KEY: train_loss}, step=self.trainer.logging_step)
        self.trainer.global_step += 1  # Lightning's order: the step counts before batch end
        for probe in self.probes:
            probe.on_train_batch_end(self.trainer, self.module, None, batch, self._micro - 1)
        self.trainer.finish_logging_step()
        self._micro = 0

    def finish(self, error: BaseException | None = None) -> Path:
        """Write the job folder (metrics.csv, config.yaml, summary.json, verdicts.json) and
        print the verdicts; ``error`` marks the run failed and keeps what it logged."""
        for probe in self.probes:
            probe.on_train_end(self.trainer, self.module)
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        config = run_config(self.module.net, optimizer, self.config)
        if self.trainer.is_global_zero:
            write_run_folder(
                self.folder, self.history, self.probes, config, self.trainer.global_step, error
            )
        return self.folder

    def __enter__(self) -> LoopProbes:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exc)
