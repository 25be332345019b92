"""Muon on the hidden weight matrices, AdamW on every other parameter, as one optimizer.

Muon (Jordan et al. 2024; ``torch.optim.Muon``) orthogonalizes the momentum of a 2-D weight
matrix by Newton-Schulz iterations; it is defined for hidden linear layers only. The usual
split, used here: the weights of every ``nn.Linear`` except the output head (the last
``nn.Linear`` of the network) go to Muon; embeddings, convolutions, biases, normalization
parameters, the head and any weight shared with an embedding go to AdamW.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def muon_weights(net: nn.Module) -> list[Tensor]:
    """The weight matrices Muon takes: those of every ``nn.Linear`` but the last (the head),
    excluding weights shared with an ``nn.Embedding`` (tied heads)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    embedded = {id(m.weight) for m in net.modules() if isinstance(m, nn.Embedding)}
    hidden = [m.weight for m in linears[:-1] if m.weight.requires_grad]
    return [w for w in dict.fromkeys(hidden) if id(w) not in embedded]


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over all trainable parameters of ``net``: ``torch.optim.Muon`` on
    :func:`muon_weights`, ``torch.optim.AdamW`` on the rest.

    Parameter groups: the Muon group first (``algorithm: muon``; ``param_groups[0]["lr"]`` is
    Muon's learning rate when there is one), then the AdamW group (``algorithm: adamw``); a
    scheduler scales both. State and ``state_dict`` are those of one torch optimizer. Built from
    the module (``splits_by_module``), not from a parameter list.

    Args: ``lr``, ``momentum``, ``nesterov``, ``ns_steps``, ``weight_decay``, ``adjust_lr_fn``
    of Muon (``match_rms_adamw`` scales Muon's step to AdamW's RMS, so one learning rate fits
    both); ``adamw_lr`` (None: ``lr``), ``adamw_betas``, ``adamw_eps``,
    ``adamw_weight_decay`` of the AdamW fallback.
    """

    splits_by_module = True

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = "match_rms_adamw",
        adamw_lr: float | None = None,
        adamw_betas: Sequence[float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ) -> None:
        matrices = muon_weights(net)
        taken = {id(w) for w in matrices}
        rest = [p for p in net.parameters() if p.requires_grad and id(p) not in taken]
        inner: list[torch.optim.Optimizer] = []
        if matrices:
            inner.append(
                torch.optim.Muon(
                    matrices,
                    lr=lr,
                    momentum=momentum,
                    nesterov=nesterov,
                    ns_steps=ns_steps,
                    weight_decay=weight_decay,
                    adjust_lr_fn=adjust_lr_fn,
                )
            )
        if rest:
            inner.append(
                torch.optim.AdamW(
                    rest,
                    lr=lr if adamw_lr is None else adamw_lr,
                    betas=tuple(adamw_betas),
                    eps=adamw_eps,
                    weight_decay=adamw_weight_decay,
                )
            )
        for opt in inner:
            opt.param_groups[0]["algorithm"] = (
                "muon" if isinstance(opt, torch.optim.Muon) else "adamw"
            )
        self.inner = inner
        super().__init__([g for opt in inner for g in opt.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Point each inner optimizer at this one's groups and state (one source of truth)."""
        for opt in self.inner:
            algorithm = opt.param_groups[0]["algorithm"]
            opt.param_groups = [g for g in self.param_groups if g["algorithm"] == algorithm]
            opt.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Muon step and one AdamW step; ``closure`` (if given) is evaluated once first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner:
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()
