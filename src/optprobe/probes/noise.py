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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from optprobe.probes.functional import LossOfParams, ParamDict, loss_and_grad

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
    trace_cov = examples_per_sample * float(((rows - mean) ** 2).sum()) / (n - 1)
    grad_sq_norm = float(mean @ mean)
    batch = n * examples_per_sample if batch_size is None else int(batch_size)
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
