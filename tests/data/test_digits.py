"""scikit-learn's 8x8 digits (optprobe.data.digits)."""

from __future__ import annotations

import torch
from data_factories import make_digits


def test_digits_value_range() -> None:
    digits = make_digits()
    digits.setup()
    assert float(digits.train_inputs.min()) == 0.0 and float(digits.train_inputs.max()) == 1.0


def test_split_is_disjoint_and_complete() -> None:
    dm = make_digits()
    dm.setup()
    all_rows = torch.cat([dm.train_inputs, dm.val_inputs]).flatten(1)
    assert len(all_rows) == 1797
    from sklearn.datasets import load_digits

    original = torch.as_tensor(load_digits().images, dtype=torch.float32).flatten(1) / 16
    # Same multiset of images: compare sorted row sums (cheap fingerprint) and the totals.
    assert torch.allclose(all_rows.sum(1).sort().values, original.sum(1).sort().values)
    assert torch.allclose(all_rows.sum(0), original.sum(0), atol=1e-3)
