"""Projecting a vector off an orthonormal basis, as Lanczos' reorthogonalization and the
deflated trace do: checked against a dense float64 projector."""

from __future__ import annotations

import pytest
import torch

from optprobe.estimators import matvec
from optprobe.estimators.matvec import project_out


def _orthonormal_rows(rows: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, rows, generator=gen, dtype=torch.float64))
    return q.T.contiguous()


@pytest.mark.parametrize("block_bytes", [8 * 7 * 3, 8 * 7 * 50, 2**25])
def test_float32_basis_projects_as_the_dense_projector_of_its_rows(monkeypatch, block_bytes):
    """Column blocks of 3 and 50 columns (a last partial block) and one block for all: the
    same result as (I - Q^T Q) w with Q the float32 rows read exactly in float64."""
    monkeypatch.setitem(matvec.UPCAST_BLOCK_BYTES, "cpu", block_bytes)
    basis = _orthonormal_rows(7, 203, seed=0).to(torch.float32)
    w = torch.randn(203, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q64 = basis.to(torch.float64)
    expected = w - q64.T @ torch.linalg.solve(q64 @ q64.T, q64 @ w)  # exact projector
    kept = w.clone()
    out = project_out(basis, project_out(basis, w))  # two passes, as Lanczos when needed
    assert torch.equal(w, kept)  # the input is not modified
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    assert float((q64 @ out).abs().max()) < 1e-12  # orthogonal to the rows to rounding


def test_float64_basis_and_empty_basis():
    basis = _orthonormal_rows(5, 40, seed=2)
    w = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = project_out(basis, w)
    assert torch.allclose(out, w - basis.T @ (basis @ w), rtol=0, atol=1e-14)
    assert float((basis @ out).abs().max()) < 1e-13
    assert project_out(None, w) is w and project_out(basis[:0], w) is w


def test_blocked_float32_projection_matches_the_float64_path():
    """The float32 path in blocks and the float64 path on the same (upcast) rows agree."""
    basis = _orthonormal_rows(12, 1000, seed=4).to(torch.float32)
    w = torch.randn(1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    blocked = project_out(basis, w)
    dense = project_out(basis.to(torch.float64), w)
    assert torch.allclose(blocked, dense, rtol=0, atol=1e-12)
