"""Seeded synthetic classification data (optprobe.data.synthetic)."""

from __future__ import annotations

import torch
from data_factories import make_synthetic, perturb_global_rng


def test_synthetic_is_deterministic_and_learnable() -> None:
    a, b = make_synthetic(seed=2), make_synthetic(seed=2)
    a.setup()
    perturb_global_rng()
    b.setup()
    assert torch.equal(a.train_inputs, b.train_inputs)
    assert torch.equal(a.train_targets, b.train_targets)
    c = make_synthetic(seed=3)
    c.setup()
    assert not torch.equal(a.train_inputs, c.train_inputs)
    # Not degenerate: several classes occur.
    assert len(torch.unique(a.train_targets)) >= 5

    # A logistic regression separates it.
    torch.manual_seed(0)
    x, y = a.train_inputs.flatten(1), a.train_targets
    model = torch.nn.Linear(x.shape[1], a.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95


def test_synthetic_custom_shape() -> None:
    dm = make_synthetic(input_shape=[3, 4, 4], num_classes=3, num_samples=100, batch_size=10)
    dm.setup()
    assert dm.input_shape == (3, 4, 4) and dm.num_classes == 3
    assert tuple(dm.train_inputs.shape) == (80, 3, 4, 4)
    assert int(dm.train_targets.max()) <= 2
