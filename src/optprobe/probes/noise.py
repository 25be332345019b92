"""Gradient noise: per-example gradient covariance trace, gradient noise scale, signal-to-noise ratio.

Notation (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training"): ``g_i`` is the
gradient of the loss on one example (one batch row; one sequence for a language model), ``G``
the true gradient, ``Sigma`` the per-example gradient covariance, so a batch of ``B`` i.i.d.
examples has gradient covariance ``Sigma / B``. All quantities are in float64 and in squared
gradient units (loss^2 / parameter^2) except the dimensionless ratios; ``gns`` is in examples.

The functions at the top of this file are pure: they never change the live network (parameters
are passed explicitly and buffers are cloned).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.func import functional_call, grad, vmap
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from optprobe.dist import rank_mean, rank_sum, world_size
from optprobe.estimators.functional import (
    LossOfParams,
    ParamDict,
    functional_loss,
    loss_and_grad,
    trainable_params,
)
from optprobe.log import say, warn
from optprobe.probes.base import ProbeCallback
from optprobe.validate import check_int

LossFn = Callable[[Tensor, Tensor], Tensor]
LossFactory = Callable[[Tensor, Tensor], LossOfParams]


def per_example_grads_supported(net: nn.Module) -> tuple[bool, str]:
    """Whether ``per_example_grads`` (vmap over examples) can run on ``net`` as it is now.

    False when a batch-norm layer normalises with batch statistics (train mode, or
    ``track_running_stats=False``): the examples are coupled and the running-stat update is an
    in-place write that vmap rejects. Use ``microbatch_grads`` instead. The answer depends on
    the train/eval mode at the time of the call.
    """
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training or module.running_mean is None:
                why = "in training mode" if module.training else "without running statistics"
                return False, (
                    f"{type(module).__name__} {name or '<root>'!r} is {why}: it couples the "
                    "examples of a batch, so per-example gradients are undefined; use "
                    "microbatch_grads"
                )
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            if module.training and module.track_running_stats:
                return False, (
                    f"{type(module).__name__} {name or '<root>'!r} updates running statistics "
                    "in place in training mode, which vmap cannot batch; use microbatch_grads"
                )
    return True, ""


def per_example_grads(
    net: nn.Module,
    params: ParamDict,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    chunk_size: int | None = None,
    randomness: str = "different",
) -> Tensor:
    """Per-example gradients ``g_i = grad loss_fn(net(x_i), y_i)``, shape (B, P), float64.

    Row ``i`` is the gradient of the loss on batch row ``i`` alone (``inputs[i:i+1]``), flattened
    in the order of ``params``; with a mean-reduced loss the batch gradient is the row mean
    (for language models only when every sequence has the same number of counted tokens).
    Parameters not in ``params`` stay fixed at the module's values; buffers are cloned so the
    live network is never modified. ``chunk_size`` bounds how many examples vmap processes at
    once (memory); ``randomness`` is vmap's: "different" draws independent dropout masks per
    example, as an ordinary batched forward does.
    """
    ok, reason = per_example_grads_supported(net)
    if not ok:
        raise ValueError(f"per_example_grads cannot run: {reason}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs have {inputs.shape[0]} rows but targets {targets.shape[0]}")
    base = {name: p.detach() for name, p in params.items()}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}

    def loss_one(p: ParamDict, x: Tensor, y: Tensor) -> Tensor:
        state = {**{k: b.clone() for k, b in buffers.items()}, **p}
        return loss_fn(functional_call(net, state, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_ex = vmap(
        grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size, randomness=randomness
    )(base, inputs, targets)
    batch = inputs.shape[0]
    return torch.cat([per_ex[k].reshape(batch, -1).to(torch.float64) for k in base], dim=1)


def microbatch_grads(
    loss_factory: LossFactory,
    params: ParamDict,
    inputs: Tensor,
    targets: Tensor,
    num_microbatches: int,
) -> Tensor:
    """Gradients of the mean loss on ``k`` equal contiguous micro-batches, shape (k, P), float64.

    Fallback for networks where per-example gradients are undefined (batch norm in train mode):
    each row averages ``B / k`` examples and is computed with the micro-batch's own batch-norm
    statistics. ``loss_factory(inputs, targets)`` must return a ``params -> loss`` closure that
    leaves the live network unchanged, e.g.
    ``functools.partial(functional_loss, net, loss_fn=loss_fn)``.
    Pass the rows to ``noise_stats(rows, examples_per_sample=B // k)``.
    """
    batch = inputs.shape[0]
    if num_microbatches < 2:
        raise ValueError(f"num_microbatches={num_microbatches} must be at least 2")
    if targets.shape[0] != batch:
        raise ValueError(f"inputs have {batch} rows but targets {targets.shape[0]}")
    if batch % num_microbatches:
        raise ValueError(
            f"batch size {batch} is not divisible by num_microbatches={num_microbatches}"
        )
    size = batch // num_microbatches
    rows = []
    for start in range(0, batch, size):
        closure = loss_factory(inputs[start : start + size], targets[start : start + size])
        rows.append(loss_and_grad(closure, params)[1])
    return torch.stack(rows)


@dataclass
class NoiseStats:
    """Gradient-noise summary of one batch.

    ``trace_cov``: tr Sigma of the per-example gradient covariance (squared gradient units).
    ``grad_sq_norm``: |G|^2 of the mean gradient (biased up by trace_cov / batch_size).
    ``gns``: simple noise scale B_simple = tr Sigma / |G|^2 (examples).
    ``snr``: |G|^2 / (tr Sigma / batch_size), signal over noise of a batch gradient (ratio).
    ``batch_size``: B used for ``snr``; ``num_samples``: rows the estimate used.
    """

    trace_cov: float
    grad_sq_norm: float
    gns: float
    snr: float
    batch_size: int
    num_samples: int


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def noise_stats(
    sample_grads: Tensor, examples_per_sample: int = 1, batch_size: int | None = None
) -> NoiseStats:
    """Noise statistics from ``n`` i.i.d. gradient estimates (rows), each a mean of
    ``examples_per_sample`` examples (1 for per-example gradients, B/k for micro-batches).

    trace_cov = examples_per_sample * sum_i |row_i - G|^2 / (n - 1) (unbiased, rescaled to one
    example), G = mean of rows, gns = trace_cov / |G|^2, snr = |G|^2 / (trace_cov / B) with
    B = ``batch_size`` (default n * examples_per_sample). A ratio whose denominator is exactly
    zero is nan.
    """
    if sample_grads.ndim != 2:
        raise ValueError(f"sample_grads must be (n, P), got shape {tuple(sample_grads.shape)}")
    n = sample_grads.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 gradient samples for a covariance, got {n}")
    if examples_per_sample < 1:
        raise ValueError(f"examples_per_sample={examples_per_sample} must be >= 1")
    rows = sample_grads.detach().to(torch.float64)
    mean = rows.mean(dim=0)
    batch = n * examples_per_sample if batch_size is None else int(batch_size)
    return _stats_from_moments(
        mean, float(((rows - mean) ** 2).sum()), n, examples_per_sample, batch
    )


def _stats_from_moments(
    mean: Tensor, sq_dev_sum: float, n: int, examples_per_sample: int, batch: int
) -> NoiseStats:
    """NoiseStats from the mean of ``n`` rows and their summed squared deviations from it."""
    trace_cov = examples_per_sample * sq_dev_sum / (n - 1)
    grad_sq_norm = float(mean @ mean)
    return NoiseStats(
        trace_cov=trace_cov,
        grad_sq_norm=grad_sq_norm,
        gns=_ratio(trace_cov, grad_sq_norm),
        snr=_ratio(grad_sq_norm, trace_cov / batch),
        batch_size=batch,
        num_samples=n,
    )


def two_batch_estimates(
    small_sq_norm: float | Tensor,
    small_batch: int,
    big_sq_norm: float | Tensor,
    big_batch: int,
) -> tuple[float, float, float]:
    """Unbiased |G|^2, tr Sigma and B_simple from two batch-gradient norms (McCandlish et al.
    2018, appendix A.1), using E|G_B|^2 = |G|^2 + tr Sigma / B.

    |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small),
    tr Sigma ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big), gns = tr Sigma / |G|^2.
    Each estimate is unbiased but noisy (|G|^2 can come out negative); average numerator and
    denominator over steps before taking the ratio. gns is nan when the |G|^2 estimate is 0.
    """
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small_batch ({small_batch}) < big_batch ({big_batch})")
    small_sq, big_sq = float(small_sq_norm), float(big_sq_norm)
    grad_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace_cov = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
    return grad_sq, trace_cov, _ratio(trace_cov, grad_sq)


def two_batch_from_shards(shard_grads: Tensor, shard_batch: int) -> tuple[float, float, float]:
    """``two_batch_estimates`` from ``k`` shard gradients (rows, each a mean of ``shard_batch``
    examples), e.g. per-rank gradients under data parallelism: the small batch is one shard
    (|G_small|^2 averaged over the k shards), the big batch their mean (k * shard_batch).
    """
    if shard_grads.ndim != 2 or shard_grads.shape[0] < 2:
        raise ValueError(f"shard_grads must be (k >= 2, P), got shape {tuple(shard_grads.shape)}")
    rows = shard_grads.detach().to(torch.float64)
    small_sq = float((rows**2).sum(dim=1).mean())
    big = rows.mean(dim=0)
    return two_batch_estimates(small_sq, shard_batch, float(big @ big), rows.shape[0] * shard_batch)


# --------------------------------------------------------------------------------------------
# Lightning callback
# --------------------------------------------------------------------------------------------

NOISE_METHODS = ("auto", "per_example", "microbatch")


def per_example_supported_in_training(net: nn.Module) -> tuple[bool, str]:
    """``per_example_grads_supported`` with ``net`` switched to training mode (as it is when
    probes run); the modes are put back as they were."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.train()
        return per_example_grads_supported(net)
    finally:
        for m, mode in modes:
            m.training = mode


class ProbeNotApplicable(ValueError):
    """This step cannot be probed (too small a batch, or per-example gradients undefined)."""


class _Merged:
    """Streaming mean and sum of squared deviations of gradient rows (Chan et al. merge),
    optionally merged over the DDP ranks."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2 = 0.0

    def add(self, rows: Tensor) -> None:
        rows = rows.to(torch.float64)
        count, mean = rows.shape[0], rows.mean(dim=0)
        m2 = float(((rows - mean) ** 2).sum())
        if self.mean is None:
            self.n, self.mean, self.m2 = count, mean, m2
            return
        delta = mean - self.mean
        total = self.n + count
        self.m2 += m2 + float(delta @ delta) * self.n * count / total
        self.mean = self.mean + delta * (count / total)
        self.n = total

    def reduce_over_ranks(self) -> None:
        """Merge the rows of every DDP rank: one all-reduce of (Σ rows, Σ‖row‖², n)."""
        if world_size() == 1:
            return
        sq_sum = self.m2 + self.n * float(self.mean @ self.mean)
        packed = rank_sum(torch.cat([self.mean * self.n, self.mean.new_tensor([sq_sum, self.n])]))
        self.n = round(float(packed[-1]))
        self.mean = packed[:-2] / self.n
        self.m2 = float(packed[-2]) - self.n * float(self.mean @ self.mean)

    def stats(self, examples_per_sample: int = 1) -> NoiseStats:
        """``noise_stats`` of all rows added (each a mean of ``examples_per_sample`` examples)."""
        batch = self.n * examples_per_sample
        return _stats_from_moments(self.mean, self.m2, self.n, examples_per_sample, batch)


def _capture_rank_gradient(probe, bucket):  # no annotations: DDP checks them as objects
    """DDP communication hook: add ‖this rank's gradient‖² over the ``dist.GradBucket`` (before
    DDP averages it) to ``probe.rank_sq_norm`` on probed steps, then all-reduce as DDP does by
    default (returns its future)."""
    if probe.capture_rank_gradient:
        probe.rank_sq_norm = probe.rank_sq_norm + bucket.buffer().detach().double().pow(2).sum()
    return default_hooks.allreduce_hook(None, bucket)


class NoiseProbe(ProbeCallback):
    """Gradient noise at x_t: per-example gradient covariance trace, noise scale, SNR.

    On every probed step, at the parameters x_t before the update and on the probe batch of
    ``B`` examples, gradient samples are drawn functionally (live network, ``.grad`` and
    buffers untouched; dropout off) and reduced by :func:`noise_stats`:

    - ``per_example``: the ``B`` per-example gradients ``g_i`` (torch.func.vmap), processed
      ``chunk_size`` examples at a time (memory ``O(chunk_size * P)``; null: all at once).
    - ``microbatch``: the gradients of ``k = num_microbatches`` equal contiguous micro-batches
      of ``B // k`` examples each (the last ``B mod k`` rows are dropped), each with its own
      batch-norm statistics; ``tr Sigma`` is rescaled to one example by ``B // k``. Only
      ``k - 1`` degrees of freedom, so noisier; needed where examples are coupled (BatchNorm in
      training mode). ``auto`` uses per_example when the network allows it, else microbatch.

    Logged keys (squared gradient units are loss^2 / parameter^2):

    - ``noise/trace_cov``: ``tr Sigma = m * sum_i |r_i - G|^2 / (n - 1)``, the unbiased trace
      of the per-example gradient covariance from ``n`` rows ``r_i`` that each average ``m``
      examples (squared gradient units).
    - ``noise/grad_sq_norm``: ``|G|^2`` of the mean gradient ``G`` on the batch (squared
      gradient units; biased up by ``tr Sigma / B``).
    - ``noise/grad_sq_norm_unbiased``: ``|G|^2 - tr Sigma / B``, unbiased for the squared norm
      of the true (population) gradient; can be negative.
    - ``noise/gns``: simple gradient noise scale ``B_simple = tr Sigma / |G|^2`` (examples;
      McCandlish et al. 2018).
    - ``noise/snr``: ``|G|^2 / (tr Sigma / B)``, signal over noise of a batch gradient
      (dimensionless).
    - ``noise/batch_size``: ``B``, the examples used (the probe batch, less dropped rows).
    - ``noise/skipped``: running count of skipped probe steps, logged instead of the values
      when a value is non-finite or the batch has fewer than two examples.

    Under DDP the rows of all ranks are merged (one all-reduce), so the keys above describe
    the global batch. The per-rank gradients of the training step itself, captured by a DDP
    communication hook before they are averaged, add the unbiased two-batch-size estimates
    (McCandlish et al. 2018, A.1; small batch = one rank's ``b`` examples, big batch = the
    ``k * b`` of all ranks), at no extra pass:

    - ``noise/trace_cov_two_batch``: ``(S - |G_big|^2) / (1/b - 1/(k b))`` with ``S`` the mean
      over ranks of ``|G_rank|^2`` (squared gradient units; unbiased, noisy with few ranks).
    - ``noise/grad_sq_norm_two_batch``: ``(k b |G_big|^2 - b S) / (k b - b)``, unbiased ``|G|^2``.
    - ``noise/gns_two_batch``: their ratio (examples).

    Cost per probed step: one forward + backward per example (vectorized) or per micro-batch.

    Args (Hydra ``probes.noise.*``; the cadence and batch arguments are the base's):
        method: ``auto``, ``per_example`` or ``microbatch``.
        num_microbatches: micro-batches for ``microbatch`` (>= 2).
        chunk_size: examples per vmap call for ``per_example`` (null: the whole batch).
    """

    family = "noise"
    default_name = "noise"

    def __init__(
        self,
        every_n_steps: int = 10,
        method: str = "auto",
        num_microbatches: int = 4,
        chunk_size: int | None = None,
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_steps, **schedule)
        if method not in NOISE_METHODS:
            raise ValueError(
                f"{self.config_key}.method must be one of {', '.join(NOISE_METHODS)}, got {method!r}; "
                f"e.g. {self.config_key}.method=auto"
            )
        self.method = method
        self.num_microbatches = check_int(
            f"{self.config_key}.num_microbatches", num_microbatches, 2
        )
        self.chunk_size = (
            None
            if chunk_size is None
            else check_int(f"{self.config_key}.chunk_size", chunk_size, 1)
        )
        #: the method in use (``per_example`` or ``microbatch``); ``auto`` is decided in setup
        self.method_used = "microbatch" if method == "microbatch" else "per_example"
        self._resolved = method != "auto"
        #: DDP: ‖this rank's gradient‖² of the step, captured by the communication hook
        self.rank_sq_norm: Tensor | float = 0.0
        self.capture_rank_gradient = False
        self._rank_hook = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.method == "microbatch":
            return
        ok, reason = per_example_supported_in_training(pl_module.net)
        if self.method == "per_example" and not ok:
            raise ValueError(
                f"{self.config_key}.method=per_example cannot run on this network: {reason}. "
                f"Set {self.config_key}.method=microbatch (or auto)."
            )
        if self.method == "auto":
            self.method_used = "per_example" if ok else "microbatch"
            self._resolved = True
            why = "" if ok else f" ({reason})"
            say(f"{self.config_key}: method=auto uses {self.method_used}{why}")

    def measure(self, net: nn.Module, loss_fn: Any, inputs: Tensor, targets: Tensor) -> NoiseStats:
        """Noise statistics of the loss at the live parameters of ``net`` on this batch.

        Raises ProbeNotApplicable when the batch has fewer than two examples, or when ``per_example``
        was requested explicitly but the network does not allow it in its current mode
        (``auto`` falls back to micro-batches then).
        """
        batch = inputs.shape[0]
        if batch < 2:
            raise ProbeNotApplicable(f"the probe batch has {batch} example(s); need at least 2")
        params = {k: p.detach() for k, p in trainable_params(net).items()}
        method = self.method_used
        if method == "per_example":
            ok, reason = per_example_grads_supported(net)
            if not ok and self.method != "auto":
                raise ProbeNotApplicable(f"per_example gradients cannot run: {reason}")
            method = "per_example" if ok else "microbatch"
        merged, per_sample = _Merged(), 1
        if method == "microbatch":
            k = min(self.num_microbatches, batch)
            per_sample = batch // k
            factory = functools.partial(functional_loss, net, loss_fn=loss_fn)
            rows = microbatch_grads(
                factory,
                params,
                inputs[: k * per_sample],
                targets[: k * per_sample],
                num_microbatches=k,
            )
            merged.add(rows)
        else:
            chunk = self.chunk_size or batch
            for start in range(0, batch, chunk):
                end = start + chunk
                merged.add(
                    per_example_grads(net, params, inputs[start:end], targets[start:end], loss_fn)
                )
        if self.batch_mode == "current":  # a fixed batch is the same on every rank
            merged.reduce_over_ranks()
        return merged.stats(per_sample)

    # ----------------------------------------------------------------- DDP two-batch estimate
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        model = trainer.strategy.model
        if world_size() < 2 or not isinstance(model, DistributedDataParallel):
            return
        try:
            model.register_comm_hook(state=self, hook=_capture_rank_gradient)
            self._rank_hook = True
        except RuntimeError as err:  # another communication hook is registered
            warn(f"{self.config_key}: no two-batch noise estimate under DDP ({err})")

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_closed:
            self.rank_sq_norm = 0.0
            self.capture_rank_gradient = self._rank_hook and self.is_probe_step(trainer.global_step)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def two_batch_values(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """The ``*_two_batch`` keys from the per-rank and the averaged gradient of the step."""
        if not self.capture_rank_gradient:
            return {}
        ranks = world_size()
        shard = sum(inputs.shape[0] for inputs, _ in self.window)
        device = pl_module.device
        small_sq = float(rank_mean(torch.as_tensor(self.rank_sq_norm, device=device)))
        big_sq = float(
            sum(
                p.grad.double().pow(2).sum()
                for p in trainable_params(pl_module.net).values()
                if p.grad is not None
            )
        )
        grad_sq, trace_cov, gns = two_batch_estimates(small_sq, shard, big_sq, ranks * shard)
        return {
            "noise/trace_cov_two_batch": trace_cov,
            "noise/grad_sq_norm_two_batch": grad_sq,
            "noise/gns_two_batch": gns,
        }

    @override
    def before_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any, step: int
    ) -> None:
        inputs, targets = self.probe_batch(pl_module)
        two_batch = self.two_batch_values(pl_module)
        try:
            st = self.measure(pl_module.net, pl_module.loss_fn, inputs, targets)
        except (ProbeNotApplicable, FloatingPointError) as err:
            self.log_values(trainer, pl_module, self.skip(f"step {step}: {err}"))
            return
        values = {
            "noise/trace_cov": st.trace_cov,
            "noise/grad_sq_norm": st.grad_sq_norm,
            "noise/grad_sq_norm_unbiased": st.grad_sq_norm - st.trace_cov / st.batch_size,
            "noise/gns": st.gns,
            "noise/snr": st.snr,
            "noise/batch_size": float(st.batch_size),
            **two_batch,
        }
        if not all(math.isfinite(v) for v in values.values()):
            bad = sorted(k for k, v in values.items() if not math.isfinite(v))
            values = self.skip(f"step {step}: non-finite {', '.join(bad)}")
        else:
            self.num_probed += 1
        self.log_values(trainer, pl_module, values)

    @override
    def resolved_settings(self) -> dict[str, Any]:
        """The method in use; empty for ``auto`` until ``setup`` has seen the network."""
        return {"method": self.method_used} if self._resolved else {}

    @override
    def final_summary(self) -> dict[str, Any]:
        return {**super().final_summary(), "method": self.method_used}
