"""Lanczos with full reorthogonalization: tridiagonalization, extreme eigenvalues, and power
iteration as the baseline it is benchmarked against.

Every function is pure in a ``MatVec`` (``v -> H v`` on flat float64 vectors) and ``dim``.
Units: for a loss in nats and dimensionless parameters, eigenvalues (and Lanczos coefficients)
are in nats per squared parameter unit. Lanczos coefficients and Ritz values are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optprobe.estimators.functional import MatVec
from optprobe.estimators.matvec import (
    DIM_HINT,
    Device,
    apply_matvec,
    random_vector,
    require_finite,
    tridiagonal,
)
from optprobe.validate import check_choice, check_int, check_number

#: Above this dimension ``lanczos_tridiagonal`` stores its basis in float32 by default
#: (ResNet-18: 11M parameters, 30 float64 vectors would take 2.7 GB).
FLOAT64_BASIS_MAX_DIM = 1_000_000


@dataclass
class EigenEstimate:
    """Extreme Hessian eigenvalues from Lanczos (loss units per squared parameter unit).

    ``rel_residual_*`` is the Ritz residual bound ``|beta_k s_k| / |theta|``: the true eigenvalue
    nearest to ``theta`` lies within ``rel_residual * |theta|`` of it. ``converged`` says both
    bounds are at most the requested ``tol``, or that Lanczos hit an invariant subspace or
    exhausted the space (both exact up to rounding). Lanczos only sees the part of the spectrum
    its start vector touches, so ``converged`` means "these are eigenvalues", which is "the
    extreme eigenvalues" with probability one for a Gaussian start vector.
    """

    lambda_max: float
    lambda_min: float
    num_matvecs: int
    converged: bool
    rel_residual_max: float
    rel_residual_min: float


class _Lanczos:
    """Incremental Lanczos with full reorthogonalization (one matvec per :meth:`step`).

    After ``k`` steps, ``alphas`` (k) and the first k - 1 ``couplings`` define the tridiagonal
    ``T_k = Q_k^T H Q_k`` and ``residual`` is ``||H q_k - Q_k T_k e_k||``, the beta that couples
    to the next vector. A coupling of exactly 0 marks a restart after a breakdown.
    """

    def __init__(
        self,
        matvec: MatVec,
        dim: int,
        capacity: int,
        start: Tensor,
        basis_dtype: torch.dtype,
    ) -> None:
        self.matvec = matvec
        self.dim = dim
        self.basis = torch.empty(capacity, dim, dtype=basis_dtype, device=start.device)
        self.alphas: list[float] = []
        self.couplings: list[float] = []
        self.residual = math.nan
        self.k = 0
        self.scale = 0.0  # running estimate of ||T||, for the breakdown threshold
        eps = torch.finfo(basis_dtype).eps
        self.breakdown_rtol = max(1e-10, 100.0 * eps)
        self._q_prev: Tensor | None = None
        self._beta_prev = 0.0
        norm = float(torch.linalg.vector_norm(start))
        if norm == 0.0:
            raise ValueError("the Lanczos start vector is zero")
        self._q: Tensor | None = start.to(torch.float64) / norm

    @property
    def exhausted(self) -> bool:
        """True when the basis spans the whole space (T is then exactly similar to H)."""
        return self.k >= self.dim

    def _orthogonalize(self, w: Tensor) -> Tensor:
        """Remove the components of ``w`` along the stored basis (two passes)."""
        q = self.basis[: self.k]
        if q.dtype == torch.float64:
            for _ in range(2):
                w = w - q.T @ (q @ w)
        else:  # float32 basis: upcast one row at a time instead of the whole block
            for _ in range(2):
                for i in range(self.k):
                    qi = q[i].to(torch.float64)
                    w = w - torch.dot(qi, w) * qi
        return w

    def step(self) -> bool:
        """One Lanczos step. Returns True on breakdown (an invariant subspace was found)."""
        if self._q is None:
            raise RuntimeError("Lanczos broke down; call restart() before stepping again")
        if self.k >= self.basis.shape[0]:
            raise RuntimeError("Lanczos basis capacity reached")
        q = self._q
        self.basis[self.k] = q.to(self.basis.dtype)
        w = apply_matvec(self.matvec, q, self.dim)
        alpha = float(torch.dot(w, q))
        require_finite(alpha, "a Lanczos alpha")
        w = w - alpha * q
        if self._q_prev is not None:
            w = w - self._beta_prev * self._q_prev
        self.k += 1
        w = self._orthogonalize(w)
        beta = float(torch.linalg.vector_norm(w))
        require_finite(beta, "a Lanczos beta")
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha), beta)
        if self.exhausted:
            # Krylov space is the whole space: T_k is H in another basis, residual is 0 exactly
            # (what is left in w is rounding error).
            self.residual = 0.0
            self._q = None
            return True
        self.residual = beta
        if beta <= self.breakdown_rtol * self.scale:
            self._q = None
            return True
        self.couplings.append(beta)
        self._q_prev, self._beta_prev = q, beta
        self._q = w / beta
        return False

    def restart(self, generator: torch.Generator | None) -> None:
        """After a breakdown, continue from a random vector orthogonal to the current basis.

        The new block is decoupled from the old one (coupling 0), which is exact: the
        orthogonal complement of an invariant subspace of a symmetric H is invariant too.
        """
        if self.exhausted:
            raise RuntimeError("Lanczos already spans the whole space")
        for _ in range(5):
            v = random_vector("gaussian", self.dim, generator, self.basis.device)
            v = self._orthogonalize(v)
            norm = float(torch.linalg.vector_norm(v))
            if norm > 1e-8 * math.sqrt(self.dim):
                break
        else:  # pragma: no cover - needs five random vectors inside the basis span
            raise RuntimeError("could not draw a restart vector outside the Lanczos basis")
        self.couplings.append(0.0)
        self._q = v / norm
        self._q_prev, self._beta_prev = None, 0.0

    def alphas_betas(self) -> tuple[Tensor, Tensor]:
        """Diagonal (k,) and off-diagonal (k - 1,) of ``T_k`` as float64 CPU tensors."""
        alphas = torch.tensor(self.alphas, dtype=torch.float64)
        # couplings[k - 1], if present, links q_k to the next (not yet used) vector
        betas = torch.tensor(self.couplings[: max(self.k - 1, 0)], dtype=torch.float64)
        return alphas, betas

    def tridiagonal(self) -> Tensor:
        return tridiagonal(*self.alphas_betas())


def _default_basis_dtype(dim: int) -> torch.dtype:
    return torch.float64 if dim <= FLOAT64_BASIS_MAX_DIM else torch.float32


def lanczos_tridiagonal(
    matvec: MatVec,
    dim: int,
    num_iters: int,
    generator: torch.Generator | None = None,
    device: Device = None,
    basis_dtype: torch.dtype | None = None,
    start: str = "rademacher",
) -> tuple[Tensor, Tensor, Tensor]:
    """Lanczos tridiagonalization of the symmetric operator ``matvec`` from one random vector.

    Runs at most ``num_iters`` steps (one matvec each) with full reorthogonalization, starting
    from a normalized ``start`` vector (``"rademacher"`` or ``"gaussian"``) drawn from
    ``generator``. Stops early on breakdown (``beta`` ~ 0: the Krylov space is invariant, its
    Ritz values are exact eigenvalues) or once the basis spans all ``dim`` directions.

    Returns ``(alphas, betas, basis)`` after ``k <= num_iters`` steps:

    * ``alphas``: float64 CPU tensor (k,), the diagonal of ``T = Q^T H Q`` (eigenvalue units);
    * ``betas``: float64 CPU tensor (k - 1,), its off-diagonal (eigenvalue units);
    * ``basis``: the Lanczos vectors ``Q`` as rows, shape (k, dim), dtype ``basis_dtype``
      (default float64 for ``dim <= 1_000_000``, else float32 to save memory), on ``device``.

    ``T``'s eigenvalues are the Ritz values; the squared first components of its eigenvectors
    are the Gauss quadrature weights of the start vector's spectral measure.
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_int("num_iters", num_iters, 1, example=30, hint="Lanczos steps, one matvec each")
    if basis_dtype is None:
        basis_dtype = _default_basis_dtype(dim)
    check_choice(
        "basis_dtype",
        basis_dtype,
        (torch.float32, torch.float64),
        hint="float32 only to save memory on very large models",
    )
    num_iters = min(num_iters, dim)
    lanczos = _Lanczos(
        matvec, dim, num_iters, random_vector(start, dim, generator, device), basis_dtype
    )
    while lanczos.k < num_iters:
        if lanczos.step():
            break
    alphas, betas = lanczos.alphas_betas()
    return alphas, betas, lanczos.basis[: lanczos.k]


def extreme_eigenvalues(
    matvec: MatVec,
    dim: int,
    max_iters: int = 30,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> EigenEstimate:
    """Largest and smallest (signed) eigenvalues of the symmetric operator ``matvec`` by Lanczos.

    Adds one Lanczos vector (one matvec) at a time from a Gaussian start vector and, after each,
    computes the Ritz values ``theta`` of the tridiagonal ``T_k`` and the residual bounds
    ``|beta_k * s_k|`` (``s_k``: last component of the Ritz vector). Stops as soon as both the
    largest and smallest Ritz value have ``bound / |theta| <= tol``, or after ``max_iters``
    matvecs. On a first breakdown (an invariant subspace: its Ritz values are exact eigenvalues,
    but the start vector may have missed the extremes) it restarts once from a random vector
    orthogonal to the basis, judges convergence on the new block and reports the extremes over
    both; a second breakdown counts as converged. When ``dim <= max_iters`` the run stops at
    the latest after ``dim`` steps, where the result is exact up to rounding. Eigenvalues are in
    loss units per squared parameter unit.
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_int("max_iters", max_iters, 1, example=30, hint="the most matvecs")
    check_number("tol", tol, low=0, low_open=True, example="1e-3", hint="relative tolerance")
    capacity = min(max_iters, dim)
    start = random_vector("gaussian", dim, generator, device)
    lanczos = _Lanczos(matvec, dim, capacity, start, _default_basis_dtype(dim))
    tiny = torch.finfo(torch.float64).tiny
    # (theta, relative residual) of the extremes of finished (invariant) blocks, if any
    done_max: tuple[float, float] | None = None
    done_min: tuple[float, float] | None = None
    best_max = best_min = (math.nan, math.inf)
    block_start = 0  # a restart after a breakdown begins a new, decoupled block
    restarts_left = 1
    converged = False
    while lanczos.k < capacity:
        broke_down = lanczos.step()
        t = lanczos.tridiagonal()[block_start:, block_start:]
        evals, evecs = torch.linalg.eigh(t)
        theta_min, theta_max = float(evals[0]), float(evals[-1])
        # floor the denominator so an exactly-zero eigenvalue gives a finite relative residual
        floor = 1e-12 * max(abs(theta_min), abs(theta_max), tiny)
        rel_min = abs(lanczos.residual * float(evecs[-1, 0])) / max(abs(theta_min), floor)
        rel_max = abs(lanczos.residual * float(evecs[-1, -1])) / max(abs(theta_max), floor)
        # Convergence is judged on the current block alone: it is a Lanczos run from a random
        # vector in the complement of the earlier block, so it sees the rest of the spectrum.
        # A breakdown is exact (an invariant subspace): its Ritz values are eigenvalues.
        converged = lanczos.exhausted or broke_down or (rel_min <= tol and rel_max <= tol)
        best_max = (theta_max, rel_max)
        if done_max is not None and done_max[0] > theta_max:
            best_max = done_max
        best_min = (theta_min, rel_min)
        if done_min is not None and done_min[0] < theta_min:
            best_min = done_min
        if broke_down and restarts_left and not lanczos.exhausted and lanczos.k < capacity:
            # The start vector may have missed the extreme eigenvectors (it lies in an invariant
            # subspace): restart once from a random vector orthogonal to that subspace. A
            # random vector in the complement touches every remaining eigenspace, so a second
            # breakdown is conclusive.
            restarts_left -= 1
            done_max, done_min = best_max, best_min
            lanczos.restart(generator)
            block_start = lanczos.k
            continue
        if converged:
            break
    return EigenEstimate(
        lambda_max=best_max[0],
        lambda_min=best_min[0],
        num_matvecs=lanczos.k,
        converged=converged,
        rel_residual_max=best_max[1],
        rel_residual_min=best_min[1],
    )


def power_iteration(
    matvec: MatVec,
    dim: int,
    max_iters: int = 1000,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> tuple[float, int, bool]:
    """Largest-magnitude eigenvalue (signed) of ``matvec`` by power iteration.

    Returns ``(eigenvalue, num_matvecs, converged)``; the eigenvalue is the Rayleigh quotient
    ``v^T H v`` of the current unit vector, and ``converged`` means its relative change between
    consecutive matvecs was ``<= tol`` (a weak criterion: it can stall on close eigenvalues,
    and on a spectrum with both ``+L`` and ``-L`` it oscillates). Kept as the baseline that
    Lanczos (:func:`extreme_eigenvalues`) is benchmarked against.
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_int("max_iters", max_iters, 1, example=1000, hint="the most matvecs")
    check_number("tol", tol, low=0, low_open=True, example="1e-3", hint="relative tolerance")
    v = random_vector("gaussian", dim, generator, device)
    v = v / torch.linalg.vector_norm(v)
    previous = math.nan
    rayleigh = math.nan
    for n in range(1, max_iters + 1):
        w = apply_matvec(matvec, v, dim)
        rayleigh = float(torch.dot(v, w))
        require_finite(rayleigh, "the Rayleigh quotient")
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0.0:  # v is in the null space (H = 0 with probability one)
            return 0.0, n, True
        if abs(rayleigh - previous) <= tol * abs(rayleigh):
            return rayleigh, n, True
        previous = rayleigh
        v = w / norm
    return rayleigh, max_iters, False
