"""The gradient-noise probe: per-example gradient covariance trace, gradient noise scale and
signal-to-noise ratio at x_t, logged as ``noise/<key>``.

The estimators are pure functions in :mod:`optprobe.estimators.per_example` (gradient samples)
and :mod:`optprobe.estimators.noise_stats` (their statistics; notation and units there). This
module holds the callback and its DDP parts: merging the gradient rows of all ranks, and the
communication hook that captures each rank's gradient for the two-batch estimates.
"""

from __future__ import annotations

import functools
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from optprobe.batches import Batch, head, num_examples, select
from optprobe.dist import rank_mean, rank_sum, world_size
from optprobe.estimators.functional import functional_loss, trainable_params
from optprobe.estimators.noise_stats import NoiseStats, stats_from_moments, two_batch_estimates
from optprobe.estimators.per_example import (
    microbatch_grads,
    per_example_grads,
    per_example_grads_supported,
    per_example_supported_in_training,
)
from optprobe.log import say, warn
from optprobe.probes.base import ProbeCallback
from optprobe.probes.target import ProbedModel
from optprobe.validate import check_choice, check_int, check_optional_int

NOISE_METHODS = ("auto", "per_example", "microbatch")


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
        return stats_from_moments(self.mean, self.m2, self.n, examples_per_sample, batch)


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
    - ``noise/grad_sq_norm``: ``|G_B|^2`` of the mean gradient ``G_B`` on the batch (squared
      gradient units; biased up by ``tr Sigma / B``).
    - ``noise/grad_sq_norm_unbiased``: ``|G|^2_u = |G_B|^2 - tr Sigma / B``, unbiased for the
      squared norm of the true (population) gradient (squared gradient units; McCandlish et
      al.'s two-batch-size estimate with ``B_small = m``, ``B_big = B``); can be <= 0.
    - ``noise/gns``: simple gradient noise scale ``B_simple = tr Sigma / |G|^2_u`` (examples;
      McCandlish et al. 2018); NaN (undefined, not a skipped step) when ``|G|^2_u <= 0``.
    - ``noise/snr``: ``|G|^2_u / (tr Sigma / B)``, signal over noise of a batch gradient
      (dimensionless); NaN when ``|G|^2_u <= 0``.
    - ``noise/gns_minibatch``: ``tr Sigma / |G_B|^2`` (examples), the ratio with the raw batch
      norm. Biased low: in expectation about ``tr Sigma / (|G|^2 + tr Sigma / B) < B``.
    - ``noise/snr_minibatch``: ``|G_B|^2 / (tr Sigma / B)`` (dimensionless), biased high:
      exactly ``noise/snr + 1`` where that is defined.
    - ``noise/batch_size``: ``B``, the examples used (the probe batch, less dropped rows).
    - ``noise/skipped``: running count of skipped probe steps, logged instead of the values
      when a value is non-finite (other than an undefined ratio, logged as NaN) or the
      batch has fewer than two examples.

    Under DDP the rows of all ranks are merged (one all-reduce), so the keys above describe
    the global batch. The per-rank gradients of the training step itself, captured by a DDP
    communication hook before they are averaged, add the unbiased two-batch-size estimates
    (McCandlish et al. 2018, A.1; small batch = one rank's ``b`` examples, big batch = the
    ``k * b`` of all ranks), at no extra pass:

    - ``noise/trace_cov_two_batch``: ``(S - |G_big|^2) / (1/b - 1/(k b))`` with ``S`` the mean
      over ranks of ``|G_rank|^2`` (squared gradient units; unbiased, noisy with few ranks).
    - ``noise/grad_sq_norm_two_batch``: ``(k b |G_big|^2 - b S) / (k b - b)``, unbiased ``|G|^2``.
    - ``noise/gns_two_batch``: their ratio (examples), B_simple as ``noise/gns`` is; NaN
      when the ``|G|^2`` estimate is <= 0.

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
        key = self.config_key
        self.method = check_choice(f"{key}.method", method, NOISE_METHODS)
        self.num_microbatches = check_int(f"{key}.num_microbatches", num_microbatches, 2)
        self.chunk_size = check_optional_int(f"{key}.chunk_size", chunk_size, 1)
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
        ok, reason = per_example_supported_in_training(self.model.net)
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

    def measure(self, model: ProbedModel, batch: Batch) -> NoiseStats:
        """Noise statistics of ``model``'s loss at the live parameters of its network on
        ``batch``.

        Raises ProbeNotApplicable when the batch has fewer than two examples, or when ``per_example``
        was requested explicitly but the network does not allow it in its current mode
        (``auto`` falls back to micro-batches then).
        """
        net, size = model.net, num_examples(batch)
        if size < 2:
            raise ProbeNotApplicable(f"the probe batch has {size} example(s); need at least 2")
        params = {k: p.detach() for k, p in trainable_params(net).items()}
        method = self.method_used
        if method == "per_example":
            ok, reason = per_example_grads_supported(net)
            if not ok and self.method != "auto":
                raise ProbeNotApplicable(f"per_example gradients cannot run: {reason}")
            method = "per_example" if ok else "microbatch"
        merged, per_sample = _Merged(), 1
        if method == "microbatch":
            k = min(self.num_microbatches, size)
            per_sample = size // k
            factory = functools.partial(functional_loss, net, loss=model.loss)
            rows = microbatch_grads(
                factory, params, head(batch, k * per_sample), num_microbatches=k
            )
            merged.add(rows)
        else:
            chunk = self.chunk_size or size
            for start in range(0, size, chunk):
                part = select(batch, slice(start, start + chunk))
                merged.add(per_example_grads(net, params, part, model.loss))
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
        shard = sum(num_examples(batch) for batch in self.window)
        device = pl_module.device
        small_sq = float(rank_mean(torch.as_tensor(self.rank_sq_norm, device=device)))
        big_sq = float(
            sum(
                p.grad.double().pow(2).sum()
                for p in self.params(pl_module).values()
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
        batch = self.probe_batch(pl_module)
        two_batch = self.two_batch_values(pl_module)
        try:
            st = self.measure(self.model, batch)
        except (ProbeNotApplicable, FloatingPointError) as err:
            self.log_values(trainer, pl_module, self.skip(f"step {step}: {err}"))
            return
        values = {
            "noise/trace_cov": st.trace_cov,
            "noise/grad_sq_norm": st.grad_sq_norm,
            "noise/grad_sq_norm_unbiased": st.grad_sq_norm_unbiased,
            "noise/gns": st.gns,
            "noise/snr": st.snr,
            "noise/gns_minibatch": st.gns_minibatch,
            "noise/snr_minibatch": st.snr_minibatch,
            "noise/batch_size": float(st.batch_size),
            **two_batch,
        }
        # ratios of finite estimates are NaN where undefined (an estimate <= 0 or exactly 0):
        # logged as NaN; a non-finite trace_cov or |G|^2 still skips the step
        undefined = (
            "noise/gns",
            "noise/snr",
            "noise/gns_minibatch",
            "noise/snr_minibatch",
            "noise/gns_two_batch",
        )
        if not self.finite_or_skip(trainer, pl_module, values, step, may_be_nan=undefined):
            return
        self.num_probed += 1
        self.log_values(trainer, pl_module, values)

    @override
    def resolved_settings(self) -> dict[str, Any]:
        """The method in use; empty for ``auto`` until ``setup`` has seen the network."""
        return {"method": self.method_used} if self._resolved else {}

    @override
    def final_summary(self) -> dict[str, Any]:
        return {**super().final_summary(), "method": self.method_used}
