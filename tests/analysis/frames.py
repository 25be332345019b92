"""Hand-built metric tables for the verdict tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def frame(n: int, **columns) -> pd.DataFrame:
    """A metrics table with steps 0..n-1 and the given columns (keys with '__' for '/')."""
    data = {"step": np.arange(n, dtype=float)}
    data.update({k.replace("__", "/"): np.asarray(v, dtype=float) for k, v in columns.items()})
    return pd.DataFrame(data)
