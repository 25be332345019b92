"""Parameter groups named from the model (embedding, attention, mlp, norm, head, ...) and a
step's quantities per group, by slicing the flat vectors the step probe already holds.

Every trainable parameter gets one group, decided by the modules that own it (a rule table by
module type, the attribute name only as a fallback for plain containers), first rule that
applies wins:

1. ``head``: the network's output layer, the last ``nn.Linear`` in module order that is not
   inside an attention or MLP block;
2. ``norm``: BatchNorm / LayerNorm / GroupNorm / RMSNorm and any class named ``*Norm*``;
3. the nearest enclosing block (the owner itself included): ``attention`` (class name ends in
   ``Attention``, ``nn.MultiheadAttention``), ``mlp`` (class name ``*Mlp``/``*MLP``/
   ``FeedForward``), ``embedding`` (``nn.Embedding``, class name ends in ``Embed``); a module of
   another type counts by its attribute name (``attn``, ``mlp``, ``ffn``, ...);
4. the owner's type: ``conv`` (any ``ConvNd``), ``linear`` (``nn.Linear``);
5. a parameter held directly by a larger module: ``embedding`` if its name says so
   (``pos_embed``, ``cls_token``), else ``other``.

A parameter shared by modules of different groups (a GPT's token embedding tied to its output
head) belongs to the joined group (``embedding_head``). Units: inner products in nats (loss
per parameter unit times parameter units), norms in the vectors' own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: Display order of the groups (joined groups sort by their first part).
GROUP_ORDER = ("embedding", "conv", "attention", "mlp", "linear", "norm", "head", "other")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_BLOCK_SUFFIXES = {
    "attention": ("Attention",),
    "mlp": ("Mlp", "MLP", "FeedForward"),
    "embedding": ("Embed", "Embedding"),
}
_BLOCK_NAMES = {
    "attention": ("attn", "attention", "self_attn", "self_attention"),
    "mlp": ("mlp", "ffn", "feed_forward", "feedforward"),
}


def _is_norm(module: nn.Module) -> bool:
    rms = getattr(nn, "RMSNorm", ())
    return isinstance(module, (*_NORM_TYPES, rms)) or "Norm" in type(module).__name__


def _block_kind(module: nn.Module, attr: str) -> str | None:
    """The group a block stands for, by its type (or by ``attr`` for an unrecognized type)."""
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    cls = type(module).__name__
    for kind, suffixes in _BLOCK_SUFFIXES.items():
        if cls.endswith(suffixes):
            return kind
    for kind, names in _BLOCK_NAMES.items():
        if attr.lower() in names:
            return kind
    return None


def _head_module(net: nn.Module) -> str | None:
    """Path of the last ``nn.Linear`` outside attention and MLP blocks (None without one)."""
    head = None
    for path, module in net.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = path.split(".")
        inside = net
        blocked = False
        for attr in parts[:-1]:
            inside = getattr(inside, attr)
            blocked |= _block_kind(inside, attr) in ("attention", "mlp")
        if not blocked:
            head = path
    return head


def _group_of(net: nn.Module, path: str, param_name: str, head: str | None) -> str:
    """The group of parameter ``param_name`` held by the module at ``path`` (rules 1-5)."""
    chain: list[tuple[str, nn.Module]] = [("", net)]
    for attr in path.split(".") if path else []:
        chain.append((attr, getattr(chain[-1][1], attr)))
    owner = chain[-1][1]
    if path and path == head:
        return "head"
    if _is_norm(owner):
        return "norm"
    for attr, module in reversed(chain):
        kind = _block_kind(module, attr)
        if kind is not None:
            return kind
    if isinstance(owner, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(owner, nn.Linear):
        return "linear"
    if "embed" in param_name.lower() or "token" in param_name.lower():
        return "embedding"
    return "other"


def group_sort_key(group: str) -> tuple[int, str]:
    """Sort key of a group name: by its first part in ``GROUP_ORDER``, unknown ones last."""
    first = group.split("_")[0]
    return (GROUP_ORDER.index(first) if first in GROUP_ORDER else len(GROUP_ORDER), group)


def group_names(net: nn.Module) -> dict[str, str]:
    """Parameter name (as ``net.named_parameters()`` gives it) -> group name, for every
    parameter of ``net``; a parameter owned by modules of several groups gets them joined."""
    head = _head_module(net)
    owners: dict[int, list[str]] = {}
    for path, module in net.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False):
            group = _group_of(net, path, name, head)
            kinds = owners.setdefault(id(param), [])
            if group not in kinds:
                kinds.append(group)
    return {
        name: "_".join(sorted(owners[id(p)], key=group_sort_key))
        for name, p in net.named_parameters()
    }


@dataclass(frozen=True)
class ParamGroups:
    """Where each group's entries lie in a flat vector of the parameters (in the order of the
    parameter dict the vector was flattened from)."""

    names: tuple[str, ...]  # group names, in display order
    lengths: Tensor  # entries per parameter (long)
    index: Tensor  # group index per parameter (long)

    @classmethod
    def of(cls, net: nn.Module, params: dict[str, Tensor]) -> ParamGroups:
        """The groups of ``params`` (name -> tensor, a subset of ``net``'s parameters)."""
        groups = group_names(net)
        missing = [n for n in params if n not in groups]
        if missing:
            raise ValueError(f"parameters {missing[:3]} are not parameters of the network")
        names = tuple(sorted({groups[n] for n in params}, key=group_sort_key))
        return cls(
            names=names,
            lengths=torch.tensor([p.numel() for p in params.values()], dtype=torch.long),
            index=torch.tensor([names.index(groups[n]) for n in params], dtype=torch.long),
        )

    def sums(self, values: Tensor) -> Tensor:
        """Per-group sums of a flat vector (one entry per group, in ``names`` order)."""
        per_param = torch.segment_reduce(values, "sum", lengths=self.lengths.to(values.device))
        out = torch.zeros(len(self.names), dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.index.to(values.device), per_param)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def group_step_quantities(
    groups: ParamGroups, delta: Tensor, grad_new: Tensor, grad_old: Tensor | None = None
) -> dict[str, dict[str, float]]:
    """Per group k, from the step's flat float64 vectors (no extra pass):

    ``lin_new`` = ⟨g⁺_k, Δ_k⟩, ``update_norm`` = ‖Δ_k‖, ``update_cos_new`` = cos(g⁺_k, Δ_k);
    with ``grad_old``: ``lin_old`` = ⟨g_k, Δ_k⟩, ``grad_norm`` = ‖g_k‖, ``update_cos_old`` =
    cos(g_k, Δ_k) (−1: the group moved straight down its gradient), ``smooth_lip`` =
    ‖g⁺_k − g_k‖ / ‖Δ_k‖. ``lin_*`` and ``update_norm``² sum over the groups to the global
    keys. NaN where a norm in a denominator is 0.
    """
    sq_delta = groups.sums(delta * delta).tolist()
    columns = {
        "lin_new": groups.sums(grad_new * delta).tolist(),
        "update_norm": [math.sqrt(s) for s in sq_delta],
    }
    sq_new = groups.sums(grad_new * grad_new).tolist()
    columns["update_cos_new"] = [
        _ratio(lin, math.sqrt(a * b)) for lin, a, b in zip(columns["lin_new"], sq_new, sq_delta)
    ]
    if grad_old is not None:
        diff = grad_new - grad_old
        sq_old = groups.sums(grad_old * grad_old).tolist()
        columns["lin_old"] = groups.sums(grad_old * delta).tolist()
        columns["grad_norm"] = [math.sqrt(s) for s in sq_old]
        columns["update_cos_old"] = [
            _ratio(lin, math.sqrt(a * b)) for lin, a, b in zip(columns["lin_old"], sq_old, sq_delta)
        ]
        columns["smooth_lip"] = [
            _ratio(math.sqrt(s), math.sqrt(d))
            for s, d in zip(groups.sums(diff * diff).tolist(), sq_delta)
        ]
    return {
        group: {key: col[i] for key, col in columns.items()} for i, group in enumerate(groups.names)
    }
