"""The base every probe callback shares: cadence, probe batches, isolation, timing, state.

A probe observes and never steers. Extra passes go through ``torch.func.functional_call`` on
explicit parameter tensors with *cloned* buffers (BatchNorm running statistics of the live
network never change), gradients are taken with ``torch.autograd.grad`` (``.grad`` is never
touched), random draws use the probe's own ``torch.Generator``, and the global RNG streams and
the train/eval mode of every module are snapshotted and restored around every probe call.

Precision: probe passes run outside autocast, in the parameters' dtype. Under mixed precision
(``trainer.precision=bf16-mixed`` / ``16-mixed``) the training step's own loss and gradient
come from autocast, so a probe that puts them in a difference with one of its own passes
recomputes them at x_t in the parameters' dtype (``training_loss_and_grad``): both points of
every difference are evaluated in the same precision.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from optprobe.batches import Batch, as_batch, concat, detached_copy, head, num_examples, to_device
from optprobe.dist import from_rank_zero, rank_mean, world_size
from optprobe.estimators.functional import (
    ParamDict,
    flatten,
    functional_loss,
    loss_and_grad,
    trainable_params,
)
from optprobe.isolation import has_active_dropout, isolated
from optprobe.probes.loss_check import check_training_loss
from optprobe.probes.target import ProbedModel, ProbeTarget
from optprobe.validate import check_choice, check_int, check_optional_int


def is_log_spaced_step(step: int, per_decade: int) -> bool:
    """True on about ``per_decade`` log-spaced steps per decade (every step early on)."""
    return step == 0 or math.floor(per_decade * math.log10(step + 1)) > math.floor(
        per_decade * math.log10(step)
    )


def is_mixed_precision(trainer: pl.Trainer) -> bool:
    """True when the training step runs under autocast (``bf16-mixed``, ``16-mixed``)."""
    return str(getattr(trainer, "precision", "32-true")).endswith("-mixed")


class ProbeCallback(Callback):
    """Base of every probe: cadence, which batch, isolation, its own cost, logging, state.

    Args:
        every_n_steps: probe every this many optimizer steps (>= 1).
        log_spaced: if true, probe on log-spaced steps instead (``per_decade`` per decade;
            every step early in training, ever sparser later).
        per_decade: probes per decade of steps when ``log_spaced``.
        start_step: first optimizer step that may be probed.
        batch: ``current`` (the training batch of the step) or ``fixed`` (one batch drawn once
            from the training data at the start and kept, saved in checkpoints).
        fixed_batch_size: examples in the fixed batch (null: the training batch size).
        target: which network of the training module is probed and its loss on a batch
            (default: optprobe's ``TrainingModule``, its ``net`` and ``probe_loss``).
    """

    family = "probe"  # the key prefix of its metrics (``<family>/<key>``)
    default_name = "probe"  # its entry name in conf/probes (``probes.<name>``)
    # Probes that compare the training step's own loss with extra passes need the extra
    # passes to see the same function: active dropout would draw another mask.
    refuses_dropout = False
    # False for probes that compare the training step's own loss and gradient (same batch).
    fixed_batch_allowed = True

    def __init__(
        self,
        every_n_steps: int = 1,
        log_spaced: bool = False,
        per_decade: int = 10,
        start_step: int = 0,
        batch: str = "current",
        fixed_batch_size: int | None = None,
        name: str | None = None,
        target: ProbeTarget | None = None,
    ) -> None:
        super().__init__()
        self.target = target or ProbeTarget()
        self.model: ProbedModel | None = None  # resolved from the training module in setup
        self.loss_check: dict[str, Any] | None = None  # the first step's check (first probe)
        # The config entry name is the probe's identity: its checkpoint state key, and its key
        # prefix when it is not the family's default entry (two instances of one probe class).
        self.name = name or self.default_name
        self.config_key = f"probes.{self.name}"
        self.prefix = self.family if self.name == self.default_name else self.name
        prefix = self.config_key
        self.every_n_steps = check_int(f"{prefix}.every_n_steps", every_n_steps, 1)
        self.per_decade = check_int(f"{prefix}.per_decade", per_decade, 1)
        self.log_spaced = bool(log_spaced)
        self.start_step = check_int(f"{prefix}.start_step", start_step, 0)
        check_choice(f"{prefix}.batch", batch, ("current", "fixed"))
        if batch == "fixed" and not self.fixed_batch_allowed:
            raise ValueError(
                f"{prefix}.batch must be 'current': this probe compares the training step's own "
                "loss and gradient with extra passes on the same batch"
            )
        self.batch_mode = batch
        self.fixed_batch_size = check_optional_int(
            f"{prefix}.fixed_batch_size", fixed_batch_size, 1
        )
        self.fixed_batch: Batch | None = None
        self.probe_seconds = 0.0
        self.num_probed = 0
        self.num_skipped = 0
        self.last_skip_reason = ""
        self._resumed_seconds = 0.0  # training seconds before a resume (from the state)
        self._fit_start: float | None = None
        self.window: list[Batch] = []
        self.window_losses: list[Tensor] = []
        self._window_closed = True
        self._step: int | None = None
        self._active = False

    # ----------------------------------------------------------------- cadence and batches
    def is_probe_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) is probed."""
        if step < self.start_step:
            return False
        k = step - self.start_step
        if self.log_spaced:
            return is_log_spaced_step(k, self.per_decade)
        return k % self.every_n_steps == 0

    def draw_fixed_batch(self, trainer: pl.Trainer) -> Batch:
        """One batch from a fresh training loader (data modules seed their own generators; the
        caller restores the global RNG streams): ``fixed_batch_size`` examples, joined from
        as many loader batches as that takes."""
        if trainer.datamodule is not None:
            loader = trainer.datamodule.train_dataloader()
        else:
            loader = trainer.train_dataloader
        parts: list[Batch] = []
        for batch in loader:
            parts.append(as_batch(batch))
            n = self.fixed_batch_size or num_examples(parts[0])
            if sum(num_examples(b) for b in parts) >= n:
                break
        return detached_copy(head(concat(parts), n))

    def probe_batch(self, pl_module: pl.LightningModule) -> Batch:
        """The batch a probe evaluates on, on the module's device: the fixed batch, or the
        current step's batch (all micro-batches of the step under gradient accumulation)."""
        batch = self.fixed_batch if self.batch_mode == "fixed" else concat(self.window)
        return to_device(batch, pl_module.device)

    # ----------------------------------------------------------------- hooks for subclasses
    def before_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer, step: int
    ) -> None:
        """At x_t with the raw gradient g_t in ``.grad`` (before clipping and the update)."""

    def after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """At x_{t+1}, right after the optimizer step ``step`` was applied."""

    def wants_step(self, step: int) -> bool:
        """Whether ``before_step``/``after_step`` run at ``step`` (default: the cadence)."""
        return self.is_probe_step(step)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_closed:
            self.window, self.window_losses, self._window_closed = [], [], False
        self.window.append(as_batch(batch))

    @override
    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        # Lightning divides each micro-batch loss by accumulate_grad_batches, so the sum over
        # the window is the mean loss of the step's batch at x_t.
        self.window_losses.append(loss.detach().to(torch.float64))

    def window_loss(self) -> float:
        """f_t(x_t): the training loss of the current step on the global batch (nats; the mean
        over the micro-batches, and over the DDP ranks)."""
        return float(rank_mean(torch.stack(self.window_losses).sum()))

    def window_mean_loss(self, pl_module: pl.LightningModule, params: ParamDict) -> float:
        """f_t at ``params`` on the step's batch (nats; mean over its micro-batches and the DDP
        ranks), one forward per micro-batch through the functional view of the network."""
        model = self.model
        with torch.no_grad():
            local = torch.stack(
                [functional_loss(model.net, b, model.loss)(params).double() for b in self.window]
            ).mean()
        return float(self.global_mean(local))

    def window_loss_and_grad(
        self, pl_module: pl.LightningModule, params: ParamDict
    ) -> tuple[float, Tensor]:
        """Mean loss (nats) and flat gradient of f_t at ``params`` over the step's
        micro-batches (and the DDP ranks): one forward+backward per micro-batch."""
        losses, grads = [], []
        for batch in self.window:
            loss, grad = loss_and_grad(
                functional_loss(self.model.net, batch, self.model.loss), params
            )
            losses.append(loss.reshape(1))
            grads.append(grad)
        # one micro-batch on one rank (the common case): no copy of the gradient
        grad = grads[0] if len(grads) == 1 else torch.stack(grads).mean(0)
        loss = torch.cat(losses).mean()
        if not self.averages_over_ranks():
            return float(loss), grad
        packed = self.global_mean(torch.cat([grad, loss.reshape(1)]))  # one all-reduce for both
        return float(packed[-1]), packed[:-1]

    def training_loss_and_grad(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, params: ParamDict
    ) -> tuple[float, Tensor]:
        """f_t(x_t) and g_t (flat) of the training step on its batch, at ``params`` = x_t and
        in the precision of the probe's own passes: the step's loss and raw ``.grad`` as they
        are (no extra cost), or, under mixed precision (autocast), recomputed in the
        parameters' dtype outside autocast (one forward+backward)."""
        if is_mixed_precision(trainer):
            return self.window_loss_and_grad(pl_module, params)
        grad = flatten(
            torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params.values()
        )
        return self.window_loss(), grad

    def global_mean(self, value: Tensor) -> Tensor:
        """A probe pass on this rank's part of the step's batch, averaged over the DDP ranks so
        it is the value on the global batch. A fixed probe batch is the same on every rank and
        is returned as is."""
        return rank_mean(value) if self.averages_over_ranks() else value

    def averages_over_ranks(self) -> bool:
        """Whether probe passes are averaged over DDP ranks: on the step's own batch, with
        more than one rank."""
        return self.batch_mode == "current" and world_size() > 1

    def resolved_settings(self) -> dict[str, Any]:
        """Settings decided at run time, written into the job's config (override)."""
        return {}

    def final_summary(self) -> dict[str, Any]:
        """What the job's summary.json records for this probe (override to add verdicts)."""
        summary = {"probed": self.num_probed, "skipped": self.num_skipped}
        if self.loss_check is not None:
            summary["loss_check"] = self.loss_check
        if self.num_skipped:
            summary["last_skip_reason"] = self.last_skip_reason
        return summary

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.sanity_checking:
            return
        self._step = trainer.global_step
        self._active = self.wants_step(self._step)
        if self.loss_check is None and self.checks_loss(trainer):
            self.loss_check = check_training_loss(self, trainer, pl_module)
        if self._active:
            with self.timed(self.model.net):
                self.before_step(trainer, pl_module, optimizer, self._step)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._step is None:
            return  # no optimizer step in this batch (gradient accumulation)
        step, active = self._step, self._active
        self._step, self._window_closed = None, True
        if active:
            with self.timed(self.model.net):
                self.after_step(trainer, pl_module, step)

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.model = self.target.resolve(pl_module, self.config_key)
        self.loss_check = None  # checked again on the first step of every fit
        if self.refuses_dropout and has_active_dropout(self.model.net):
            raise ValueError(
                f"{self.config_key}: the model has active dropout, so extra passes would see "
                "another mask than the training step did; set the model's dropout to 0 (e.g. "
                f"model.dropout=0.0) or turn this probe off ({self.config_key}=null)"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter() - self._resumed_seconds
        if self.batch_mode == "fixed" and self.fixed_batch is None:
            with isolated(pl_module.net):  # the same batch on every DDP rank: rank 0's
                self.fixed_batch = from_rank_zero(self.draw_fixed_batch(trainer))

    @contextlib.contextmanager
    def timed(self, net: nn.Module) -> Iterator[None]:
        """Isolate and time one probe call (adds to ``probe_seconds``); autocast is off inside,
        so every probe pass runs in the parameters' dtype."""
        start = time.perf_counter()
        device = next(net.parameters()).device.type
        no_autocast = (
            torch.autocast(device_type=device, enabled=False)
            if device in ("cpu", "cuda")
            else contextlib.nullcontext()
        )
        try:
            with isolated(net), no_autocast:
                yield
        finally:
            self.probe_seconds += time.perf_counter() - start

    def params(self, pl_module: pl.LightningModule) -> ParamDict:
        """The live trainable parameters of the probed network."""
        return trainable_params(self.model.net)

    def checks_loss(self, trainer: pl.Trainer) -> bool:
        """Whether this probe runs the first step's training-loss check: the first probe of
        the trainer does, once per fit."""
        probes = [c for c in trainer.callbacks if isinstance(c, ProbeCallback)]
        return bool(probes) and probes[0] is self

    # ----------------------------------------------------------------- logging
    def overhead_keys(self, trainer: pl.Trainer) -> dict[str, float]:
        """``probe/overhead`` = seconds in all probes / seconds training (excluding probes).

        Logged by the first probe callback of the trainer only, so it is counted once.
        """
        probes = [c for c in trainer.callbacks if isinstance(c, ProbeCallback)]
        if not probes or probes[0] is not self or self._fit_start is None:
            return {}
        probe_s = sum(p.probe_seconds for p in probes)
        train_s = max(time.perf_counter() - self._fit_start - probe_s, 1e-9)
        return {"probe/overhead": probe_s / train_s, "probe/seconds": probe_s}

    def log_values(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: dict[str, float]
    ) -> None:
        """Log floats straight to the trainer's loggers at the current step (rank zero only).

        Not through ``pl_module.log``: values logged from ``on_before_optimizer_step`` stay in
        Lightning's result collection and would be re-logged, stale, at every later step, and
        ``self.log`` rounds Python floats to float32. The step is the one Lightning logs
        ``train/loss`` at, so the run store merges both into one row.
        """
        if self.prefix != self.family:
            values = {self._renamed(k): v for k, v in values.items()}
        values = {**values, **self.overhead_keys(trainer)}
        if trainer.sanity_checking or not values or not trainer.is_global_zero:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def _renamed(self, key: str) -> str:
        family, sep, rest = key.partition("/")
        return f"{self.prefix}/{rest}" if sep and family == self.family else key

    def skip(self, reason: str) -> dict[str, float]:
        """Count a skipped probe step; returns the counter keys to log."""
        self.num_skipped += 1
        self.last_skip_reason = reason
        return {f"{self.family}/skipped": float(self.num_skipped)}

    def finite_or_skip(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        values: dict[str, float],
        step: int,
        may_be_nan: tuple[str, ...] = (),
    ) -> bool:
        """True when every value (except the keys ``may_be_nan``) is finite; otherwise count
        the step as skipped, log the counter and return False. The one non-finite path of
        every probe: a NaN/inf probe value is never logged and never a crash."""
        bad = sorted(k for k, v in values.items() if k not in may_be_nan and not math.isfinite(v))
        if not bad:
            return True
        self.log_values(trainer, pl_module, self.skip(f"step {step}: non-finite {', '.join(bad)}"))
        return False

    # ----------------------------------------------------------------- state
    @property
    def state_key(self) -> str:
        return f"optprobe.probe.{self.name}"

    @override
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before probes were named keep the state under the class name.
        states = checkpoint.get("callbacks", {})
        legacy = f"optprobe.{type(self).__name__}"
        if self.state_key not in states and legacy in states:
            self.load_state_dict(states[legacy])

    def extra_state(self) -> dict[str, Any]:
        """Running quantities of the subclass (override)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned (override)."""

    def state_dict(self) -> dict[str, Any]:
        elapsed = 0.0 if self._fit_start is None else time.perf_counter() - self._fit_start
        return {
            "probe_seconds": self.probe_seconds,
            "train_seconds": elapsed,
            "num_probed": self.num_probed,
            "num_skipped": self.num_skipped,
            "fixed_batch": self.fixed_batch,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe_seconds = state_dict["probe_seconds"]
        self._resumed_seconds = state_dict["train_seconds"]
        self.num_probed = state_dict["num_probed"]
        self.num_skipped = state_dict["num_skipped"]
        self.fixed_batch = state_dict["fixed_batch"]
        self.load_extra_state(state_dict["extra"])
