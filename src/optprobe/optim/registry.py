"""The one table of per-optimizer facts the curvature probe reads: the stability threshold of
``lr * lambda_max`` and the diagonal preconditioner P whose ``lambda_max(P^-1 H)`` it is about.

Thresholds are dimensionless: on a quadratic with Hessian H the optimizer's iteration (with its
preconditioner P frozen) converges iff ``lr * lambda_max(P^-1 H)`` (P = I without one) stays
below it (Cohen et al. 2021 for gradient descent; 2022 for adaptive methods). Formulas:

- ``sgd``: 2 without momentum; heavy ball with momentum beta and dampening tau
  (``v = beta v + (1 - tau) g``): ``(2 + 2 beta) / (1 - tau)`` (inf for tau >= 1).
- ``nesterov``: ``(2 + 2 beta) / (1 + 2 beta)``.
- ``adam``: ``(2 + 2 beta1) / (1 - beta1)`` on ``P = sqrt(v_hat) + eps`` (38 at beta1 = 0.9):
  the EMA ``m = beta1 m + (1 - beta1) g`` is heavy ball with dampening ``1 - beta1``.
- ``rmsprop``: ``2 + 2 mu`` on ``P = sqrt(v) + eps`` (centered: ``sqrt(v - g_avg^2) + eps``),
  heavy ball with momentum mu and no dampening on the preconditioned gradient.
- ``adagrad``: 2 on ``P = sqrt(sum g^2) + eps``, with the decayed step
  ``lr / (1 + k lr_decay)`` after k steps.

No threshold is defined (NaN, with the reason) for sign and orthogonalized updates (Lion, Muon:
the step is not linear in g, so no linearization gives a threshold), Adafactor (update clipping
and the parameter-scaled relative step make the step nonlinear), Schedule-Free (the averaging
weight c_t = 1/t makes the iteration time-varying), SOAP (its preconditioner is not diagonal and
is not read) and every optimizer not in the table. Weight decay is left out of every formula.

Each entry also names the optimizer's own geometry (docs/metrics.md §7,
:mod:`optprobe.estimators.geometry`), read by :func:`optimizer_geometry`: ``diagonal`` (‖·‖_P
with the entry's preconditioner: Adam-type, RMSprop, Adagrad, Schedule-Free AdamW), ``linf``
(sign methods: Lion), ``spectral`` (Muon); none for the others (SGD, Adafactor, SOAP...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from optprobe.estimators.functional import ParamDict
from optprobe.estimators.geometry import Geometry
from optprobe.validate import check_choice

#: Update rules :func:`stability_threshold` knows.
STABILITY_RULES = ("sgd", "nesterov", "adam", "rmsprop", "adagrad")

Preconditioner = Callable[[torch.optim.Optimizer, ParamDict], "Tensor | None"]


def stability_threshold(rule: str, beta: float = 0.0, dampening: float = 0.0) -> float:
    """The largest ``lr * lambda_max`` (dimensionless) at which ``rule`` is stable on a
    quadratic (module docstring): ``beta`` is the momentum (Adam: beta1), ``dampening`` that of
    torch's SGD."""
    check_choice("rule", rule, STABILITY_RULES)
    if rule == "adam":
        return (2.0 + 2.0 * beta) / (1.0 - beta)
    if rule in ("rmsprop", "adagrad"):
        return 2.0 + 2.0 * beta
    if beta == 0.0:
        return 2.0
    if rule == "nesterov":
        return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)
    return (2.0 + 2.0 * beta) / (1.0 - dampening) if dampening < 1 else math.inf


# ----------------------------------------------------------------- diagonal preconditioners
def _diagonal(
    optimizer: torch.optim.Optimizer, params: ParamDict, part: Callable[[dict, dict], Tensor | None]
) -> Tensor | None:
    """``part(group, state)`` of every parameter in the order of ``params``, flat float64;
    None when some parameter is not in the optimizer or has no state yet."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for p in params.values():
        group, state = group_of.get(id(p)), optimizer.state.get(p, {})
        value = None if group is None or not state else part(group, state)
        if value is None:
            return None
        parts.append(value.detach().to(torch.float64).reshape(-1))
    return torch.cat(parts)


def _floor(optimizer: torch.optim.Optimizer, params: ParamDict) -> Tensor | None:
    """The preconditioner's floor ε (P = √v + ε) per coordinate, flat float64 in the order of
    ``params``; None when some parameter's group has no numeric ``eps``."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for p in params.values():
        eps = group_of.get(id(p), {}).get("eps")
        if not isinstance(eps, (int, float)):
            return None
        parts.append(torch.full((p.numel(),), float(eps), dtype=torch.float64, device=p.device))
    return torch.cat(parts)


def _adam_part(group: dict, state: dict) -> Tensor | None:
    step = float(state.get("step", 0))
    if "exp_avg_sq" not in state or step < 1:
        return None
    v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    v_hat = v.to(torch.float64) / (1.0 - float(group["betas"][1]) ** step)
    return v_hat.sqrt() + float(group["eps"])


def _rmsprop_part(group: dict, state: dict) -> Tensor | None:
    if "square_avg" not in state:
        return None
    v = state["square_avg"].to(torch.float64)
    if group.get("centered"):
        v = v - state["grad_avg"].to(torch.float64) ** 2
    return v.sqrt() + float(group["eps"])


def _adagrad_part(group: dict, state: dict) -> Tensor | None:
    if float(state.get("step", 0)) < 1:
        return None
    return state["sum"].to(torch.float64).sqrt() + float(group["eps"])


def _schedule_free_adam_part(group: dict, state: dict) -> Tensor | None:
    k = int(group.get("k", 0))
    if "exp_avg_sq" not in state or k < 1:
        return None
    v_hat = state["exp_avg_sq"].to(torch.float64) / (1.0 - float(group["betas"][1]) ** k)
    return v_hat.sqrt() + float(group["eps"])


def _preconditioner(part: Callable[[dict, dict], Tensor | None]) -> Preconditioner:
    return lambda optimizer, params: _diagonal(optimizer, params, part)


# ----------------------------------------------------------------- the table
@dataclass(frozen=True)
class OptimizerFacts:
    """What the probes know about one optimizer family.

    ``threshold(group)``: the stability threshold from the first parameter group's
    hyperparameters (None: not defined, see ``reason``). ``preconditioner(optimizer, params)``:
    the flat diagonal P of the last applied step (gradient units), None before the first step;
    absent for optimizers without a diagonal preconditioner. ``step_size(optimizer)``: the
    learning rate the next step uses (default ``param_groups[0]["lr"]``). ``norm``: the
    optimizer's geometry when it is not its diagonal preconditioner's (``linf``, ``spectral``).
    """

    name: str
    threshold: Callable[[dict], float] | None = None
    reason: str = ""
    preconditioner: Preconditioner | None = None
    step_size: Callable[[torch.optim.Optimizer], float] | None = None
    norm: str | None = None

    def lr(self, optimizer: torch.optim.Optimizer) -> float:
        """The learning rate of the next step (first parameter group)."""
        if self.step_size is not None:
            return self.step_size(optimizer)
        return float(optimizer.param_groups[0]["lr"])

    def threshold_of(self, optimizer: torch.optim.Optimizer) -> float:
        """The threshold for ``optimizer``'s current hyperparameters; NaN when undefined."""
        if self.threshold is None:
            return math.nan
        return self.threshold(optimizer.param_groups[0])


def _sgd_threshold(group: dict) -> float:
    rule = "nesterov" if group.get("nesterov") else "sgd"
    return stability_threshold(
        rule, float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0))
    )


def _adagrad_lr(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    k = max(steps, default=0.0)
    return float(group["lr"]) / (1.0 + k * float(group.get("lr_decay", 0.0)))


_SIGN = "the step is the sign of a momentum (not linear in g): no linear stability threshold"
_ORTHO = "the step is an orthogonalized matrix (not linear in g): no linear stability threshold"
_SCHEDULE_FREE = (
    "the averaging weight c_t = 1/t makes the iteration time-varying: no fixed threshold"
)
_ADAM = OptimizerFacts(
    "adam",
    threshold=lambda g: stability_threshold("adam", float(g["betas"][0])),
    preconditioner=_preconditioner(_adam_part),
)

#: (top-level package, class name) -> facts; subclasses inherit their base's entry.
OPTIMIZERS: dict[tuple[str, str], OptimizerFacts] = {
    ("torch", "SGD"): OptimizerFacts("sgd", threshold=_sgd_threshold),
    ("torch", "Adam"): _ADAM,
    ("torch", "AdamW"): _ADAM,
    ("torch", "RMSprop"): OptimizerFacts(
        "rmsprop",
        threshold=lambda g: stability_threshold("rmsprop", float(g.get("momentum", 0.0))),
        preconditioner=_preconditioner(_rmsprop_part),
    ),
    ("torch", "Adagrad"): OptimizerFacts(
        "adagrad",
        threshold=lambda g: stability_threshold("adagrad"),
        preconditioner=_preconditioner(_adagrad_part),
        step_size=_adagrad_lr,
    ),
    ("torch", "Adafactor"): OptimizerFacts(
        "adafactor",
        reason="update clipping and the parameter-scaled relative step make the step "
        "nonlinear in g: no linear stability threshold",
    ),
    ("torch", "Muon"): OptimizerFacts("muon", reason=_ORTHO, norm="spectral"),
    ("optprobe", "MuonWithAdamW"): OptimizerFacts(
        "muon",
        reason=_ORTHO + " (AdamW's threshold covers only the fallback parameters)",
        norm="spectral",
    ),
    ("lion_pytorch", "Lion"): OptimizerFacts("lion", reason=_SIGN, norm="linf"),
    ("schedulefree", "AdamWScheduleFree"): OptimizerFacts(
        "schedule_free_adamw",
        reason=_SCHEDULE_FREE,
        preconditioner=_preconditioner(_schedule_free_adam_part),
    ),
    ("schedulefree", "SGDScheduleFree"): OptimizerFacts("schedule_free_sgd", reason=_SCHEDULE_FREE),
    ("heavyball", "SOAP"): OptimizerFacts(
        "soap",
        reason="its preconditioner (Adam in the eigenbasis of Shampoo's Kronecker factors) is "
        "not diagonal and is not read: no threshold on the measured lambda_max",
    ),
}


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning's ``LightningOptimizer`` (or ``optimizer`` itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def facts_for(optimizer: Any) -> OptimizerFacts:
    """The facts of ``optimizer`` (a torch optimizer, or Lightning's wrapper of one): the
    entry of its class or of its nearest registered base class; for an unregistered optimizer
    a ``facts`` whose threshold is undefined, with the reason."""
    optimizer = torch_optimizer(optimizer)
    for cls in type(optimizer).__mro__:
        facts = OPTIMIZERS.get((cls.__module__.split(".")[0], cls.__name__))
        if facts is not None:
            return facts
    name = type(optimizer).__name__
    return OptimizerFacts(
        name.lower(),
        reason=f"no stability threshold is registered for {name} "
        "(add its closed form to optprobe.optim.registry.OPTIMIZERS)",
    )


def optimizer_geometry(optimizer: Any, params: ParamDict) -> Geometry | None:
    """The geometry of ``optimizer`` over ``params`` (flat order): its diagonal preconditioner
    as it stands now (read right after a step: the P that step used), ℓ∞ or spectral per its
    entry; None without a registered geometry, before the preconditioner exists, or where some
    P_i = 0 (eps = 0 and a zero second moment: the dual norm would be infinite)."""
    facts = facts_for(optimizer)
    if facts.norm == "linf":
        return Geometry("linf")
    if facts.norm == "spectral":
        return Geometry("spectral", shapes=tuple(p.shape for p in params.values()))
    if facts.preconditioner is None:
        return None
    optimizer = torch_optimizer(optimizer)
    precond = facts.preconditioner(optimizer, params)
    if precond is None or bool((precond <= 0).any()):
        return None
    return Geometry("diagonal", precond=precond, floor=_floor(optimizer, params))
