"""Fixtures shared by the estimator tests."""

from __future__ import annotations

import pytest
import torch
from dense_operators import SPECTRUM_40, symmetric_with_spectrum


@pytest.fixture
def spectrum_40():
    torch.manual_seed(0)
    return symmetric_with_spectrum(SPECTRUM_40, seed=1)
