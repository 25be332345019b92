"""Gradient samples for noise estimates: per-example gradients (vmap) and micro-batch gradients.

Rows are flat float64 gradients in the order of ``params`` (gradient units: loss per parameter
unit). Both are pure: the live network is never changed (parameters are passed explicitly and
buffers are cloned).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from optprobe.batches import Batch, as_single_example, num_examples, select, vmap_dims
from optprobe.estimators.functional import (
    BatchLoss,
    LossOfParams,
    ParamDict,
    functional_loss,
    loss_and_grad,
)
from optprobe.isolation import preserved_modes
from optprobe.validate import check_int

LossFactory = Callable[[Batch], LossOfParams]


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


def per_example_supported_in_training(net: nn.Module) -> tuple[bool, str]:
    """``per_example_grads_supported`` with ``net`` switched to training mode (as it is when
    probes run); the modes are put back as they were."""
    with preserved_modes(net):
        net.train()
        return per_example_grads_supported(net)


def per_example_grads(
    net: nn.Module,
    params: ParamDict,
    batch: Batch,
    loss: BatchLoss,
    chunk_size: int | None = None,
    randomness: str = "different",
) -> Tensor:
    """Per-example gradients ``g_i = grad loss(net, example_i)``, shape (B, P), float64.

    Row ``i`` is the gradient of the loss on example ``i`` of the batch alone (a batch of one,
    :mod:`optprobe.batches`), flattened in the order of ``params``; with a mean-reduced loss
    the batch gradient is the row mean (for language models only when every sequence has the
    same number of counted tokens). Parameters not in ``params`` stay fixed at the module's
    values; buffers are cloned so the live network is never modified. ``chunk_size`` bounds
    how many examples vmap processes at once (memory); ``randomness`` is vmap's: "different"
    draws independent dropout masks per example, as an ordinary batched forward does.
    """
    ok, reason = per_example_grads_supported(net)
    if not ok:
        raise ValueError(f"per_example_grads cannot run: {reason}")
    size = num_examples(batch)
    base = {name: p.detach() for name, p in params.items()}
    dims = vmap_dims(batch)

    def loss_one(p: ParamDict, example: Batch) -> Tensor:
        return functional_loss(net, as_single_example(example, dims), loss)(p)

    per_ex = vmap(
        grad(loss_one), in_dims=(None, dims), chunk_size=chunk_size, randomness=randomness
    )(base, batch)
    return torch.cat([per_ex[k].reshape(size, -1).to(torch.float64) for k in base], dim=1)


def microbatch_grads(
    loss_factory: LossFactory,
    params: ParamDict,
    batch: Batch,
    num_microbatches: int,
) -> Tensor:
    """Gradients of the mean loss on ``k`` equal contiguous micro-batches, shape (k, P), float64.

    Fallback for networks where per-example gradients are undefined (batch norm in train mode):
    each row averages ``B / k`` examples and is computed with the micro-batch's own batch-norm
    statistics. ``loss_factory(batch)`` must return a ``params -> loss`` closure that leaves
    the live network unchanged, e.g. ``functools.partial(functional_loss, net, loss=loss)``.
    Pass the rows to ``noise_stats(rows, examples_per_sample=B // k)``.
    """
    total = num_examples(batch)
    check_int("num_microbatches", num_microbatches, 2, example=4, hint="a covariance needs 2")
    if total % num_microbatches:
        raise ValueError(
            f"batch size {total} is not divisible by num_microbatches={num_microbatches}"
        )
    size = total // num_microbatches
    rows = []
    for start in range(0, total, size):
        closure = loss_factory(select(batch, slice(start, start + size)))
        rows.append(loss_and_grad(closure, params)[1])
    return torch.stack(rows)
