"""Reading columns of a run's metrics table (one row per step, NaN where a key was not logged)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def present(df: pd.DataFrame, *keys: str) -> bool:
    """Every key is a column with at least one value."""
    return all(k in df.columns and df[k].notna().any() for k in keys)


def rows(df: pd.DataFrame, *keys: str) -> list[np.ndarray]:
    """The values of ``keys`` (as float arrays, in row order) on rows where none is NaN."""
    block = df[list(keys)].apply(pd.to_numeric, errors="coerce").astype(float)
    block = block[block.notna().all(axis=1)]
    return [block[k].to_numpy() for k in keys]


def finite(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays restricted to the positions where all of them are finite."""
    keep = np.ones(arrays[0].shape, dtype=bool)
    for a in arrays:
        keep &= np.isfinite(a)
    return [a[keep] for a in arrays]


def finite_values(df: pd.DataFrame, key: str) -> np.ndarray | None:
    """The finite values of one column (None when there are none)."""
    if key not in df.columns:
        return None
    (values,) = finite(*rows(df, key))
    return values if values.size else None


def tolerance(df: pd.DataFrame, key: str) -> np.ndarray:
    """The rounding tolerance column ``key`` aligned with ``df`` (0 where not logged)."""
    if key in df.columns:
        return df[key].fillna(0.0).to_numpy(dtype=float)
    return np.zeros(len(df))
