"""Collectives for data-parallel jobs: the explicit all-reduces that probes use to evaluate on
the global batch (this process's rank from its environment: ``optprobe.rank``). Imports
nothing of the training side."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of data-parallel ranks (1 when no process group is up)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduced(value: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    """``value`` reduced with ``op`` over the data-parallel ranks (itself with one rank)."""
    if world_size() == 1:
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=op)
    return reduced


def rank_sum(value: Tensor) -> Tensor:
    """Sum of ``value`` over the data-parallel ranks (an explicit all-reduce; ``value`` itself
    with one rank)."""
    return _all_reduced(value, dist.ReduceOp.SUM)


def rank_max(value: Tensor) -> Tensor:
    """Maximum of ``value`` over the data-parallel ranks (``value`` itself with one rank)."""
    return _all_reduced(value, dist.ReduceOp.MAX)


def rank_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over the data-parallel ranks: ``rank_sum`` divided by their number.

    Ranks hold equal batches (``EpochShuffleSampler`` pads each epoch to a multiple of the
    world size), so the mean of per-rank batch means is the mean over the global batch, and
    it is what DDP averages gradients to.
    """
    return rank_sum(value) / world_size()


def from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; itself with one rank)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def end_process_group() -> None:
    """Destroy the process group if one is up (Lightning keeps it; the next job needs a new one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
