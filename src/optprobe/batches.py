"""Batches as probes see them: any nest of tuples, lists and dicts of tensors whose examples lie
along dimension 0 (``(x, y)``, ``{"input_ids": ..., "labels": ...}``, a Hugging Face
``BatchEncoding``), with the few operations probes need: count, join, pick, move, copy.

A batch is normalised once when a probe sees it (:func:`as_batch`): mappings become plain
dicts, so the operations below and ``torch.func.vmap`` walk it as a tree. Leaves that are not
tensors (a string, a flag) are kept as they are and are the same for every example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

Batch = Any
"""A nest of tuples, lists and dicts with tensors (examples along dim 0) at the leaves."""


def as_batch(batch: Batch) -> Batch:
    """``batch`` with every mapping (``BatchEncoding``, ``UserDict``...) turned into a dict and
    every tuple or list kept, so that it is a tree of plain containers; raises a ValueError
    naming the leaf when the tensors disagree on the number of examples or there is none."""
    tree = _plain(batch)
    num_examples(tree)
    return tree


def _plain(node: Any) -> Any:
    if isinstance(node, Tensor):
        return node
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # a named tuple
        return type(node)(*(_plain(v) for v in node))
    if isinstance(node, tuple):
        return tuple(_plain(v) for v in node)
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _tensor_leaves(batch: Batch) -> list[tuple[str, Tensor]]:
    leaves, _ = pytree.tree_flatten_with_path(batch)
    return [(pytree.keystr(path), leaf) for path, leaf in leaves if isinstance(leaf, Tensor)]


def num_examples(batch: Batch) -> int:
    """The number of examples: the common size of dim 0 of every tensor of the batch."""
    leaves = [(name, t) for name, t in _tensor_leaves(batch) if t.dim() > 0]
    if not leaves:
        raise ValueError(
            f"the batch ({type(batch).__name__}) holds no tensor with a batch dimension: probes "
            "need the examples along dim 0 of the batch's tensors"
        )
    sizes = {name or "<batch>": t.shape[0] for name, t in leaves}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            f"the batch's tensors disagree on the number of examples along dim 0 ({listed}); "
            "probes split batches into examples along dim 0, so every tensor must have it first"
        )
    return next(iter(sizes.values()))


def _map_examples(fn, batch: Batch) -> Batch:
    """Apply ``fn`` to every tensor leaf with a batch dimension; other leaves stay."""
    return pytree.tree_map(
        lambda leaf: fn(leaf) if isinstance(leaf, Tensor) and leaf.dim() > 0 else leaf, batch
    )


def select(batch: Batch, index: Tensor | slice) -> Batch:
    """The examples ``index`` (positions or a slice) of the batch."""

    def pick(t: Tensor) -> Tensor:
        return t[index.to(t.device)] if isinstance(index, Tensor) else t[index]

    return _map_examples(pick, batch)


def head(batch: Batch, n: int) -> Batch:
    """The first ``n`` examples."""
    return select(batch, slice(0, n))


def concat(batches: Sequence[Batch]) -> Batch:
    """One batch of all examples of ``batches`` (of one structure), in order."""
    if len(batches) == 1:
        return batches[0]
    flat = [pytree.tree_flatten(b) for b in batches]
    spec = flat[0][1]
    for _, other in flat[1:]:
        if other != spec:
            raise ValueError("the batches of one step have different structures; cannot join them")
    joined = [
        torch.cat(parts) if isinstance(parts[0], Tensor) and parts[0].dim() > 0 else parts[0]
        for parts in zip(*(leaves for leaves, _ in flat))
    ]
    return pytree.tree_unflatten(joined, spec)


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """The batch with every tensor on ``device``."""
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, Tensor) else t, batch)


def detached_copy(batch: Batch) -> Batch:
    """A copy whose tensors share nothing with the original (a batch kept across steps)."""
    return pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t, batch)


def vmap_dims(batch: Batch) -> Batch:
    """``in_dims`` for ``torch.func.vmap`` over the examples: 0 for tensors with a batch
    dimension, None for every other leaf."""
    return pytree.tree_map(lambda t: 0 if isinstance(t, Tensor) and t.dim() > 0 else None, batch)


def as_single_example(example: Batch, dims: Batch) -> Batch:
    """One example as vmap hands it (the batched leaves, ``dims`` 0, without their batch
    dimension) as a batch of one."""
    return pytree.tree_map(lambda t, d: t if d is None else t.unsqueeze(0), example, dims)
