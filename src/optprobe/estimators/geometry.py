"""The optimizer's own geometry (docs/metrics.md §7): a norm on the flat parameter vector and
its dual, in which the descent lemma and the Lipschitz ratio of the gradient are measured.

Three geometries, each a (norm, dual norm) pair with ⟨v, Δ⟩ ≤ ‖v‖_* ‖Δ‖:

- ``diagonal``: ‖Δ‖_P = sqrt(Σ_i P_i Δ_i²), ‖v‖_{P,*} = sqrt(Σ_i v_i² / P_i), with P the
  optimizer's diagonal preconditioner (Adam-type: √v̂ + ε; gradient units, so ‖Δ‖_P² is in
  nats when Δ is in parameter units and P in nats per squared parameter unit).
- ``linf`` (sign methods, Lion): ‖Δ‖_∞ = max_i |Δ_i|, dual ‖v‖_1 = Σ_i |v_i|.
- ``spectral`` (Muon): per parameter block (in the order of the flat vector), the block as a
  matrix (shape[0] rows; vectors and scalars as one row), ‖Δ‖ = max over blocks of the block's
  spectral norm, dual Σ over blocks of the block's nuclear norm. Vector blocks (biases, norm
  gains) reduce to ℓ2, which is self-dual; every block is measured this way, including the
  parameters a Muon wrapper hands to its AdamW fallback (they are not in AdamW's ‖·‖_P).

Inputs are flat float64 vectors; every function is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

GEOMETRIES = ("diagonal", "linf", "spectral")


@dataclass(frozen=True)
class Geometry:
    """One norm on the flat parameters: ``kind`` in ``GEOMETRIES``; ``precond``: the flat
    diagonal P (``diagonal``); ``floor``: its floor ε per coordinate where P = √v + ε (Adam,
    RMSprop, Adagrad), else None; ``shapes``: the parameter shapes in flat order
    (``spectral``)."""

    kind: str
    precond: Tensor | None = None
    shapes: tuple[torch.Size, ...] = ()
    floor: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in GEOMETRIES:
            raise ValueError(f"geometry kind {self.kind!r} is not one of {GEOMETRIES}")
        if self.kind == "diagonal" and (self.precond is None or bool((self.precond <= 0).any())):
            raise ValueError("a diagonal geometry needs a preconditioner P with every P_i > 0")
        if self.kind == "spectral" and not self.shapes:
            raise ValueError("a spectral geometry needs the parameter shapes")

    def norm(self, v: Tensor) -> float:
        """‖v‖ in this geometry (the units of v, weighted by √P for ``diagonal``)."""
        if self.kind == "diagonal":
            return math.sqrt(float((self.precond * v * v).sum()))
        if self.kind == "linf":
            return float(v.abs().max())
        return max(float(torch.linalg.matrix_norm(m, ord=2)) for m in _blocks(v, self.shapes))

    def at_floor(self) -> Tensor | None:
        """The coordinates whose P is within 2x of its floor ε (√v̂ ≤ ε: a second moment that
        is still about 0, e.g. a ReLU unit that has not fired yet); None without a floor."""
        if self.kind != "diagonal" or self.floor is None:
            return None
        return self.precond <= 2.0 * self.floor

    def dual_norm(self, v: Tensor) -> float:
        """‖v‖_* = sup over ‖Δ‖ ≤ 1 of ⟨v, Δ⟩ (gradients: nats per unit of the norm)."""
        if self.kind == "diagonal":
            return math.sqrt(float((v * v / self.precond).sum()))
        if self.kind == "linf":
            return float(v.abs().sum())
        return sum(float(torch.linalg.matrix_norm(m, ord="nuc")) for m in _blocks(v, self.shapes))


def _blocks(v: Tensor, shapes: tuple[torch.Size, ...]) -> list[Tensor]:
    """``v`` cut into one matrix per parameter: (shape[0], rest) for ≥ 2-D, one row else."""
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != v.numel():
        raise ValueError(f"shapes cover {sum(sizes)} entries, the vector has {v.numel()}")
    parts = torch.split(v, sizes)
    return [p.reshape(s[0], -1) if len(s) >= 2 else p.reshape(1, -1) for p, s in zip(parts, shapes)]


def geometry_quantities(
    geometry: Geometry, delta: Tensor, grad_new: Tensor, grad_old: Tensor | None = None
) -> dict[str, float]:
    """The step keys measured in ``geometry`` (without prefix, suffix ``_P``):
    ``update_norm_P`` = ‖Δ‖; with the old-point gradient also ``smooth_lip_P`` =
    ‖g⁺ − g‖_* / ‖Δ‖ (nats per squared unit of the norm) and ``grad_norm_P`` = ‖g‖_*, and
    for a preconditioner with a floor ε: ``precond_floor_coords``, the coordinates with
    P ≤ 2ε (second moment still about 0), and ``smooth_lip_P_floor_share``, the share of
    ‖g⁺ − g‖_*² that comes from them (near 1: L_P is set by coordinates the optimizer has
    not yet scaled, where P = ε makes the dual norm huge)."""
    norm = geometry.norm(delta)
    out = {"update_norm_P": norm}
    if grad_old is not None:
        out["smooth_lip_P"] = geometry.dual_norm(grad_new - grad_old) / norm
        out["grad_norm_P"] = geometry.dual_norm(grad_old)
        floor = geometry.at_floor()
        if floor is not None:
            diff = grad_new - grad_old
            weighted = diff * diff / geometry.precond
            total = float(weighted.sum())
            out["precond_floor_coords"] = float(floor.sum())
            out["smooth_lip_P_floor_share"] = (
                float(weighted[floor].sum()) / total if total > 0 else 0.0
            )
    return out
