"""Memory of the Lanczos basis: on the CPU it is allocated once at the cap (pages are mapped
when written) and never copied to grow; off the CPU it grows once, from its first chunk to the
cap; the estimates are bit-for-bit the same either way."""

from __future__ import annotations

import pytest
import torch
from dense_operators import dense_matvec, symmetric_with_spectrum

from optprobe.estimators import lanczos
from optprobe.estimators.hutchinson import hutchpp_trace
from optprobe.estimators.lanczos import BASIS_CHUNK, extreme_eigenvalues

DIM = 120
CAP = 80  # > 4 * BASIS_CHUNK: growing by doubling would copy the basis three times


def hard_operator():
    """A spectrum without gaps: Lanczos to 1e-12 runs into the cap."""
    eigs = torch.linspace(-1.0, 3.0, DIM, dtype=torch.float64) ** 3
    return dense_matvec(symmetric_with_spectrum(eigs, seed=7))


def growing(monkeypatch):
    """Make the CPU grow its basis from ``BASIS_CHUNK`` rows, as CUDA does."""
    cuda_rows = lanczos.basis_rows
    monkeypatch.setattr(lanczos, "basis_rows", lambda c, device: cuda_rows(c, torch.device("cuda")))


def run(matvec, warm=None):
    est = extreme_eigenvalues(
        matvec, DIM, CAP, 1e-12, generator=torch.Generator().manual_seed(1), warm_start=warm
    )
    trace = hutchpp_trace(
        matvec,
        DIM,
        0.1,
        12,
        basis=est.basis,
        basis_trace=est.basis_trace,
        generator=torch.Generator().manual_seed(2),
    )
    return est, trace


def basis_pointers(monkeypatch) -> list[int]:
    """The basis storage's address after every Lanczos step (a new one: a copy to grow)."""
    pointers = []
    step = lanczos._Lanczos.step

    def spy(self):
        out = step(self)
        pointers.append(self.basis.data_ptr())
        return out

    monkeypatch.setattr(lanczos._Lanczos, "step", spy)
    return pointers


def test_cpu_basis_is_allocated_once_at_the_cap_and_never_copied(monkeypatch):
    pointers = basis_pointers(monkeypatch)
    est, _ = run(hard_operator())
    assert est.num_matvecs == CAP and not est.converged
    assert len(set(pointers)) == 1  # no copy while growing: the old rows never sit next to a new
    assert est.basis.untyped_storage().nbytes() == CAP * DIM * 8


def test_growing_basis_grows_once_to_the_cap(monkeypatch):
    growing(monkeypatch)  # 16 -> 80 rows: a peak of 96 rows, not 16 + 32 + 64 + 80 copies
    pointers = basis_pointers(monkeypatch)
    est, _ = run(hard_operator())
    assert est.num_matvecs == CAP
    assert len(set(pointers)) == 2
    assert pointers[BASIS_CHUNK - 1] != pointers[BASIS_CHUNK]
    assert est.basis.untyped_storage().nbytes() == CAP * DIM * 8


@pytest.mark.parametrize("basis_dtype", ["float64", "float32"])
def test_estimates_are_identical_to_the_growing_basis(monkeypatch, basis_dtype):
    if basis_dtype == "float32":  # the large-model basis, forced on a small operator
        monkeypatch.setattr(lanczos, "FLOAT64_BASIS_MAX_DIM", DIM - 1)
    matvec = hard_operator()
    cold, cold_trace = run(matvec)
    warm, warm_trace = run(matvec, cold.ritz_vectors)
    growing(monkeypatch)
    cold2, cold2_trace = run(matvec)
    warm2, warm2_trace = run(matvec, cold2.ritz_vectors)
    assert cold.basis.dtype == getattr(torch, basis_dtype)
    for a, b in ((cold, cold2), (warm, warm2)):
        assert (a.lambda_max, a.lambda_min, a.basis_trace) == (
            b.lambda_max,
            b.lambda_min,
            b.basis_trace,
        )
        assert (a.num_matvecs, a.converged) == (b.num_matvecs, b.converged)
        assert (a.rel_residual_max, a.rel_residual_min) == (b.rel_residual_max, b.rel_residual_min)
        assert torch.equal(a.ritz_vectors, b.ritz_vectors) and torch.equal(a.basis, b.basis)
    assert cold_trace == cold2_trace and warm_trace == warm2_trace
