"""Where Simpson's rule for D_t is exact and where it is not: the positive control (a quartic,
exact) and the negative one (a ReLU kink inside the step, first-order error)."""

from __future__ import annotations

import pytest
import torch

from optprobe.estimators.identities import simpson_quantities


def along(f, x0: torch.Tensor, delta: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The exact D_t = f(x0 + Δ) − f(x0) and Simpson's estimate from the three gradients."""

    def grad(x):
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad(f(x), x)[0]

    grads = [grad(x0 + s * delta) for s in (0.0, 0.5, 1.0)]
    exact = float(f(x0 + delta) - f(x0))
    return exact, simpson_quantities(*grads, delta)


def test_exact_on_a_quartic():
    x0 = torch.tensor([0.3, -1.2], dtype=torch.float64)
    delta = torch.tensor([0.7, 0.4], dtype=torch.float64)

    def quartic(x):
        return (x**4).sum() - 2 * x[0] ** 3 * x[1] + x @ x

    exact, quad = along(quartic, x0, delta)
    assert quad["loss_change_quad"] == pytest.approx(exact, rel=1e-12)


def test_not_exact_where_the_step_crosses_a_relu_kink():
    delta = torch.tensor([1.0], dtype=torch.float64)

    def relu(x):
        return torch.relu(x).sum()

    exact, quad = along(relu, torch.tensor([-0.6], dtype=torch.float64), delta)
    assert exact == pytest.approx(0.4)
    assert quad["loss_change_quad"] == pytest.approx(1 / 6)  # misses the kink's share
    # without a kink in the step the same function is integrated exactly
    exact, quad = along(relu, torch.tensor([0.2], dtype=torch.float64), delta)
    assert quad["loss_change_quad"] == pytest.approx(exact, rel=1e-12)
