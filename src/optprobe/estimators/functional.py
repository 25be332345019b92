"""Functional views of a network for probes: parameter dicts, flat vectors, losses, HVPs.

Every probe evaluates the *training* loss at some parameter point without touching the live
module: parameters are passed explicitly (``torch.func.functional_call``) and buffers are
cloned, so BatchNorm running statistics of the live network never change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from optprobe.batches import Batch
from optprobe.isolation import preserved_modes

ParamDict = dict[str, Tensor]
LossOfParams = Callable[[ParamDict], Tensor]
MatVec = Callable[[Tensor], Tensor]


def trainable_params(net: nn.Module) -> ParamDict:
    """Name -> parameter for every parameter with ``requires_grad`` (live tensors, not copies)."""
    return {name: p for name, p in net.named_parameters() if p.requires_grad}


def detached_copy(params: ParamDict) -> ParamDict:
    """Detached clones of ``params`` (a snapshot that later optimizer steps cannot change)."""
    return {name: p.detach().clone() for name, p in params.items()}


def flatten(tensors: Iterable[Tensor], dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Concatenate tensors into one flat vector (float64 by default, for exact inner products)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    return flat if dtype is None else flat.to(dtype)


def unflatten_like(vec: Tensor, like: ParamDict) -> ParamDict:
    """Split a flat vector into tensors shaped and typed like ``like`` (inverse of flatten)."""
    out, offset = {}, 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = vec[offset : offset + n].view(ref.shape).to(ref.dtype)
        offset += n
    if offset != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, parameters need {offset}")
    return out


BatchLoss = Callable[[nn.Module, Batch], Tensor]
"""``loss(net, batch)``: the training loss (a scalar, mean over the batch's examples) of the
network on a batch, computed by calling ``net`` (see :mod:`optprobe.batches`)."""


def supervised(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> BatchLoss:
    """The batch loss of ``(inputs, targets)`` batches: ``loss_fn(net(inputs), targets)``."""

    def batch_loss(net: nn.Module, batch: Batch) -> Tensor:
        inputs, targets = batch
        return loss_fn(net(inputs), targets)

    return batch_loss


class _LossOfBatch(nn.Module):
    """``net`` with ``loss`` as its forward, so that ``functional_call`` swaps the parameters
    of ``net`` wherever ``loss`` calls it (parameter names get the prefix ``net.``)."""

    def __init__(self, net: nn.Module, loss: BatchLoss) -> None:
        super().__init__()
        self.net = net
        self.batch_loss = loss

    def forward(self, batch: Batch) -> Tensor:
        return self.batch_loss(self.net, batch)


def functional_loss(net: nn.Module, batch: Batch, loss: BatchLoss) -> LossOfParams:
    """Return ``params -> loss(net; params, batch)`` with the live buffers untouched.

    ``params`` are named as in ``net.named_parameters()``. Buffers are cloned on every call, so
    a forward in train mode (BatchNorm) updates the clones only. The network's train/eval mode
    is whatever it is when the closure is called.
    """
    wrapped = _LossOfBatch(net, loss)
    buffers = {f"net.{name}": b for name, b in net.named_buffers()}

    def loss_of_params(params: ParamDict) -> Tensor:
        state = {k: b.clone() for k, b in buffers.items()}
        state.update({f"net.{k}": v for k, v in params.items()})
        return functional_call(wrapped, state, (batch,))

    return loss_of_params


def loss_and_grad(loss_of_params: LossOfParams, params: ParamDict) -> tuple[Tensor, Tensor]:
    """Loss (float64 scalar) and its gradient as a flat float64 vector at ``params``."""
    leaf = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        loss = loss_of_params(leaf)
        grads = torch.autograd.grad(loss, list(leaf.values()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaf.values())]
    return loss.detach().to(torch.float64), flatten(grads)


def hvp_double_backward(loss_of_params: LossOfParams, params: ParamDict) -> MatVec:
    """Hessian-vector product ``v -> H v`` by double backward (works with BatchNorm in train mode).

    One forward+backward builds the gradient graph once; every call then costs one backward
    through it. Vectors are flat float64; the product is returned in float64.
    """
    leaf = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        loss = loss_of_params(leaf)
        grads = torch.autograd.grad(
            loss, list(leaf.values()), create_graph=True, allow_unused=True, materialize_grads=True
        )
    flat_grad = torch.cat([g.reshape(-1) for g in grads])

    def matvec(v: Tensor) -> Tensor:
        with torch.enable_grad():
            hv = torch.autograd.grad(
                flat_grad,
                list(leaf.values()),
                grad_outputs=v.to(flat_grad.dtype),
                retain_graph=True,
            )
        return flatten(hv)

    return matvec


def load_jvp_decompositions() -> None:
    """Import torch's forward-mode decompositions now, without the one FutureWarning their
    import raises (they are registered with ``torch.jit.script``, deprecated in torch 2.14;
    Python prints it with the source line ``warnings.warn(`` echoed). Forward-mode AD imports
    them lazily on first use; any other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        import torch._decomp.decompositions_for_jvp  # noqa: F401


def hvp_forward_over_reverse(loss_of_params: LossOfParams, params: ParamDict) -> MatVec:
    """Hessian-vector product by ``torch.func`` forward-over-reverse (jvp of grad).

    Fails on BatchNorm in train mode and on attention kernels without forward-mode AD
    (:func:`forward_mode_blocker` says why before a pass; the curvature probe checks it at
    setup).
    """
    base = {k: v.detach() for k, v in params.items()}
    grad_fn = torch.func.grad(loss_of_params)
    load_jvp_decompositions()

    def matvec(v: Tensor) -> Tensor:
        tangents = unflatten_like(v, base)
        _, hv = torch.func.jvp(grad_fn, (base,), (tangents,))
        return flatten(hv.values())

    return matvec


def forward_mode_blocker(net: nn.Module) -> str | None:
    """Why ``torch.func`` forward-over-reverse HVPs cannot run on ``net`` in training mode.

    Rule-based (no trial pass): batch-norm or instance-norm layers that update running
    statistics in place, ``nn.MultiheadAttention`` (scaled-dot-product kernels without
    forward-mode AD) and timm blocks with ``fused_attn`` on. ``None`` when nothing blocks it.
    The modes of ``net`` are put back as they were.
    """
    norms = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
    with preserved_modes(net):
        net.train()
        for name, m in net.named_modules():
            label = f"{type(m).__name__} {name or '<root>'!r}"
            if isinstance(m, norms) and m.training and m.track_running_stats:
                return (
                    f"{label} updates its running statistics in place in training mode, "
                    "which forward-mode AD (torch.func.jvp) cannot do"
                )
            if isinstance(m, nn.MultiheadAttention):
                return f"{label} calls fused attention kernels that lack forward-mode AD"
            if getattr(m, "fused_attn", False) is True:
                return f"{label} uses a fused attention kernel without forward-mode AD"
    return None
