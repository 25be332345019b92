"""Gradient-noise statistics: covariance trace, gradient noise scale, signal-to-noise ratio.

Notation (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training"): ``g_i`` is the
gradient of the loss on one example (one batch row; one sequence for a language model), ``G``
the true gradient, ``Sigma`` the per-example gradient covariance, so a batch of ``B`` i.i.d.
examples has gradient covariance ``Sigma / B``. All quantities are in float64 and in squared
gradient units (loss^2 / parameter^2) except the dimensionless ratios; noise scales are in
examples.

A measurement is a definition, so the ratios come in two named variants, side by side:

- unbiased (``gns``, ``snr``; the probe's ``noise/gns``, ``noise/snr``): the
  ratio of the unbiased estimates of tr Sigma and of |G|^2. The batch-mean gradient G_B has
  E|G_B|^2 = |G|^2 + tr Sigma / B, so |G|^2 is estimated by |G_B|^2 - tr Sigma / B; with n rows
  that each average m examples this is exactly McCandlish et al.'s two-batch-size estimate
  (appendix A.1) with B_small = m and B_big = n m (see ``two_batch_estimates``). This is their
  B_simple. The |G|^2 estimate can be <= 0 when noise dominates; the ratio is then undefined
  (nan), not a failure.
- minibatch (``gns_minibatch``, ``snr_minibatch``; the probe's ``noise/gns_minibatch``, ``noise/snr_minibatch``):
  the ratio with the raw |G_B|^2. Biased: E tr Sigma / E|G_B|^2 = tr Sigma / (|G|^2 +
  tr Sigma / B) < B, so the noise scale is biased low (far below B_simple once B_simple is
  comparable to B or larger) and the SNR high (by 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optprobe.validate import check_int, check_optional_int


@dataclass
class NoiseStats:
    """Gradient-noise summary of one batch of ``num_samples`` rows, each a mean of ``m``
    examples (``n m`` examples in all).

    ``trace_cov``: tr Sigma, unbiased, of the per-example gradient covariance (squared gradient
    units).
    ``grad_sq_norm``: |G_B|^2 of the batch-mean gradient (squared gradient units; biased up by
    tr Sigma / (n m)).
    ``grad_sq_norm_unbiased``: |G_B|^2 - trace_cov / (n m), unbiased for the squared norm of
    the true gradient (squared gradient units); can be <= 0 when noise dominates.
    ``gns``: B_simple = trace_cov / grad_sq_norm_unbiased, the simple noise scale of
    McCandlish et al. 2018 (examples); nan when grad_sq_norm_unbiased <= 0 (undefined).
    ``snr``: grad_sq_norm_unbiased / (trace_cov / batch_size), signal over noise of a
    batch gradient (dimensionless); nan when either is <= 0.
    ``gns_minibatch``: the minibatch ratio trace_cov / grad_sq_norm (examples). Biased low: its
    expectation is about tr Sigma / (|G|^2 + tr Sigma / (n m)) < n m. Nan when |G_B|^2 = 0.
    ``snr_minibatch``: the minibatch ratio grad_sq_norm / (trace_cov / batch_size) (dimensionless).
    Biased high (by 1 when batch_size = n m). Nan when trace_cov = 0.
    ``batch_size``: B used for ``snr`` and ``snr_minibatch`` (examples); ``num_samples``: rows
    ``n`` the estimate used.
    """

    trace_cov: float
    grad_sq_norm: float
    gns_minibatch: float
    snr_minibatch: float
    batch_size: int
    num_samples: int
    grad_sq_norm_unbiased: float
    gns: float
    snr: float


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def _positive_ratio(num: float, den: float) -> float:
    """num / den of two estimates of positive quantities; nan (undefined) unless den > 0."""
    return num / den if den > 0 else math.nan


def noise_stats(
    sample_grads: Tensor, examples_per_sample: int = 1, batch_size: int | None = None
) -> NoiseStats:
    """Noise statistics from ``n`` i.i.d. gradient estimates (rows), each a mean of
    ``m = examples_per_sample`` examples (1 for per-example gradients, B/k for micro-batches).

    trace_cov = m * sum_i |row_i - G_B|^2 / (n - 1) (unbiased, rescaled to one example),
    G_B = mean of rows, grad_sq_norm_unbiased = |G_B|^2 - trace_cov / (n m)
    = (n |G_B|^2 - mean_i |row_i|^2) / (n - 1), gns = trace_cov /
    grad_sq_norm_unbiased, snr = grad_sq_norm_unbiased / (trace_cov / B), and the
    biased gns_minibatch = trace_cov / |G_B|^2, snr_minibatch = |G_B|^2 / (trace_cov / B), with
    B = ``batch_size`` (default n m; it sets the batch whose SNR is reported, not the |G|^2
    correction). The unbiased ratios are nan unless both estimates are positive; a minibatch
    ratio is nan when its denominator is exactly zero.
    """
    if sample_grads.ndim != 2:
        raise ValueError(f"sample_grads must be (n, P), got shape {tuple(sample_grads.shape)}")
    n = sample_grads.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 gradient samples for a covariance, got {n}")
    check_int("examples_per_sample", examples_per_sample, 1, example=1)
    check_optional_int("batch_size", batch_size, 1, example=64)
    rows = sample_grads.detach().to(torch.float64)
    mean = rows.mean(dim=0)
    batch = n * examples_per_sample if batch_size is None else int(batch_size)
    return stats_from_moments(
        mean, float(((rows - mean) ** 2).sum()), n, examples_per_sample, batch
    )


def stats_from_moments(
    mean: Tensor, sq_dev_sum: float, n: int, examples_per_sample: int, batch: int
) -> NoiseStats:
    """NoiseStats from the mean of ``n`` rows (gradient units) and their summed squared
    deviations from it (squared gradient units); ``batch``: B of the SNRs (examples)."""
    trace_cov = examples_per_sample * sq_dev_sum / (n - 1)
    grad_sq_norm = float(mean @ mean)
    grad_sq_unbiased = grad_sq_norm - trace_cov / (n * examples_per_sample)
    return NoiseStats(
        trace_cov=trace_cov,
        grad_sq_norm=grad_sq_norm,
        gns_minibatch=_ratio(trace_cov, grad_sq_norm),
        snr_minibatch=_ratio(grad_sq_norm, trace_cov / batch),
        batch_size=batch,
        num_samples=n,
        grad_sq_norm_unbiased=grad_sq_unbiased,
        gns=_positive_ratio(trace_cov, grad_sq_unbiased),
        snr=(
            _positive_ratio(grad_sq_unbiased, trace_cov / batch)
            if grad_sq_unbiased > 0
            else math.nan
        ),
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
    Each estimate is unbiased but noisy (|G|^2 can come out <= 0); average numerator and
    denominator over steps before taking the ratio. gns is nan (undefined) when the |G|^2
    estimate is <= 0, as ``NoiseStats.gns`` is: with B_small = m and B_big = n m,
    and |G_small|^2 averaged over the n rows, these are exactly ``noise_stats``'s unbiased
    trace_cov, grad_sq_norm_unbiased and gns.
    """
    check_int("small_batch", small_batch, 1, example=8, hint="examples")
    check_int("big_batch", big_batch, small_batch + 1, hint="more examples than small_batch")
    small_sq, big_sq = float(small_sq_norm), float(big_sq_norm)
    grad_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace_cov = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
    return grad_sq, trace_cov, _positive_ratio(trace_cov, grad_sq)


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
