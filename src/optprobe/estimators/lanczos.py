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
    project_out,
    random_vector,
    require_finite,
    tridiagonal,
)
from optprobe.validate import check_choice, check_int, check_number

#: Above this dimension ``lanczos_tridiagonal`` stores its basis in float32 by default
#: (ResNet-18: 11M parameters, 30 float64 vectors would take 2.7 GB).
FLOAT64_BASIS_MAX_DIM = 1_000_000

#: Rows of the Lanczos basis allocated at first off the CPU; when they fill up the basis grows
#: once, to the cap (on the CPU the whole cap is allocated at once, see :func:`basis_rows`).
BASIS_CHUNK = 16

#: Default cap on the matvecs of one :func:`extreme_eigenvalues` run (measured: enough for
#: both extremes to 1e-3 on the benchmark MLP, CNN and GPT in
#: benchmarks/results/curvature-cpu-quick.md, written by benchmarks/curvature_accuracy.py).
DEFAULT_MAX_ITERS = 80

#: Full reorthogonalization repeats its projection when the first one left less than this
#: share of the vector's norm (Kahan and Parlett's "twice is enough" criterion, 1/sqrt(2)).
REORTH_RATIO = 2**-0.5

#: Error bounds that can stop :func:`extreme_eigenvalues`, the default first (see
#: :func:`gap_refined_bound`).
ERROR_BOUNDS = ("residual", "gap")

#: Weight of the random component of a warm start vector (relative to the previous Ritz
#: vectors, each of unit norm): it makes the start touch every eigenvector with probability one.
WARM_NOISE = 1e-2


@dataclass
class EigenEstimate:
    """Extreme Hessian eigenvalues from Lanczos (loss units per squared parameter unit).

    ``rel_residual_max`` is the Ritz residual bound ``|beta_k s_k|`` of the top Ritz value over
    ``|theta_max|``; ``rel_residual_min`` is the bound of the bottom Ritz value over the
    spectrum's scale ``max(|theta_max|, |theta_min|)``, so that a zero eigenvalue (a singular
    Hessian) converges. The true eigenvalue nearest to ``theta`` lies within the bound of it.
    ``rel_error_max`` and ``rel_error_min`` are the error bounds the stopping rule used, on the
    same scales: the residual bounds themselves (``bound="residual"``) or their gap-refined
    ``min(r, r^2 / gap)`` (``bound="gap"``, :func:`gap_refined_bound`).
    ``converged`` says both error bounds are at most the requested ``tol``, or that Lanczos hit
    an invariant subspace or exhausted the space (both exact up to rounding); False means the
    cap ``max_iters`` was hit first. Lanczos only sees the part of the spectrum its start vector
    touches, so ``converged`` means "these are eigenvalues", which is "the extreme eigenvalues"
    with probability one for a start vector with a random component, up to the width of a
    cluster of eigenvalues at the extreme that Lanczos has not separated yet (measured in
    tests/estimators/test_lanczos_bounds.py).

    ``ritz_vectors`` (2, dim), float32 on the operator's device: the unit Ritz vectors of
    ``lambda_max`` and ``lambda_min``, the warm start of the next run. ``basis`` (k, dim): the
    orthonormal Lanczos vectors as rows, and ``basis_trace = tr(Q^T H Q)`` (the sum of the
    Lanczos alphas), for a trace estimate deflated by the Krylov space
    (:func:`optprobe.estimators.hutchinson.hutchpp_trace`).
    """

    lambda_max: float
    lambda_min: float
    num_matvecs: int
    converged: bool
    rel_residual_max: float
    rel_residual_min: float
    rel_error_max: float
    rel_error_min: float
    ritz_vectors: Tensor | None = None
    basis: Tensor | None = None
    basis_trace: float = math.nan
    matvecs_to_max: int | None = None


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
        self.capacity = capacity
        rows = basis_rows(capacity, start.device)[0]
        self.basis = torch.empty(rows, dim, dtype=basis_dtype, device=start.device)
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

    def _orthogonalize(self, w: Tensor) -> tuple[Tensor, float]:
        """``w`` without its components along the stored basis, and its norm: one pass, and a
        second one when the first removed much of ``w`` (its norm fell below ``REORTH_RATIO``
        of the norm before), as the second pass is then needed for orthogonality to rounding."""
        basis = self.basis[: self.k]
        before = float(torch.linalg.vector_norm(w))
        w = project_out(basis, w)
        norm = float(torch.linalg.vector_norm(w))
        if norm < REORTH_RATIO * before:
            w = project_out(basis, w)
            norm = float(torch.linalg.vector_norm(w))
        return w, norm

    def step(self) -> bool:
        """One Lanczos step. Returns True on breakdown (an invariant subspace was found)."""
        if self._q is None:
            raise RuntimeError("Lanczos broke down; call restart() before stepping again")
        if self.k >= self.capacity:
            raise RuntimeError("Lanczos basis capacity reached")
        if self.k >= self.basis.shape[0]:  # off the CPU, once: the first chunk to the cap
            rows = self.capacity - self.k
            self.basis = torch.cat([self.basis, self.basis.new_empty(rows, self.dim)])
        q = self._q
        self.basis[self.k] = q.to(self.basis.dtype)
        w = apply_matvec(self.matvec, q, self.dim)
        alpha = float(torch.dot(w, q))
        require_finite(alpha, "a Lanczos alpha")
        w = w - alpha * q
        if self._q_prev is not None:
            w = w - self._beta_prev * self._q_prev
        self.k += 1
        w, beta = self._orthogonalize(w)
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
            v, norm = self._orthogonalize(v)
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


def basis_rows(capacity: int, device: torch.device) -> tuple[int, ...]:
    """Row counts of the Lanczos basis as it is allocated, in order (the last is
    ``capacity``; a run that stops early never reaches the later ones).

    CPU: the whole ``capacity`` at once. Its memory pages are mapped when first written, so
    rows never reached cost nothing, and the basis is never copied to grow (a copy holds the
    old rows and the grown tensor at once). Elsewhere (CUDA allocates the whole tensor at
    once): ``BASIS_CHUNK`` rows, so a run that converges within them never holds the whole
    cap, then one growth to the cap, a peak of ``BASIS_CHUNK`` + cap rows (doubling 16, 32,
    64, 80 peaked at 144 rows for a cap of 80).
    """
    if device.type == "cpu" or capacity <= BASIS_CHUNK:
        return (capacity,)
    return (BASIS_CHUNK, capacity)


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


def warm_start_vector(
    previous: Tensor, generator: torch.Generator | None, device: Device = None
) -> Tensor:
    """A Lanczos start vector from earlier Ritz vectors ``previous`` (m, dim): the sum of the
    normalized rows plus a Gaussian component of norm ``WARM_NOISE`` (float64, on ``device``).

    The Krylov space of a sum of m approximate eigenvectors resolves them in about m steps; the
    random component keeps every other eigenvector in reach (with probability one), so an
    eigenvalue that overtakes the tracked ones is still found, if more slowly.
    """
    rows = previous.to(device=device, dtype=torch.float64)
    start = (rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)).sum(0)
    noise = random_vector("gaussian", rows.shape[1], generator, device)
    return start + WARM_NOISE * noise / torch.linalg.vector_norm(noise)


def _ritz_bounds(
    lanczos: _Lanczos, block_start: int, bound: str
) -> tuple[float, float, float, float, float, float]:
    """``(theta_max, theta_min, res_max, res_min, err_max, err_min)`` of the block of ``T`` from
    ``block_start`` on: its extreme Ritz values, their residual bounds ``r = |beta_k s_k|`` and
    their error bounds (``r`` itself for ``bound="residual"``; ``min(r, r^2 / gap)`` for
    ``bound="gap"``, see :func:`gap_refined_bound`)."""
    t = lanczos.tridiagonal()[block_start:, block_start:]
    evals, evecs = torch.linalg.eigh(t)
    res = (lanczos.residual * evecs[-1]).abs()
    theta = [float(x) for x in evals]
    r = [float(x) for x in res]
    err_max, err_min = r[-1], r[0]
    if bound == "gap" and len(theta) > 1:
        err_max = gap_refined_bound(r[-1], theta[-1] - theta[-2] - r[-2])
        err_min = gap_refined_bound(r[0], theta[1] - theta[0] - r[1])
    return theta[-1], theta[0], r[-1], r[0], err_max, err_min


def gap_refined_bound(residual: float, gap: float) -> float:
    """Error bound of an extreme Ritz value with residual bound ``residual`` whose nearest other
    eigenvalue is at least ``gap`` away: ``min(residual, residual^2 / gap)`` (Kato-Temple;
    Parlett, The Symmetric Eigenvalue Problem, 11.7), or ``residual`` when ``gap <= 0``.

    The gap is estimated from the next Ritz value, moved towards the extreme by its own
    residual bound; an eigenvalue Lanczos has not yet seen between the two would make the gap
    smaller than estimated, the same proviso as "the extreme" for any Krylov method.
    """
    if gap <= 0.0:
        return residual
    return min(residual, residual * residual / gap)


def _estimate(
    lanczos: _Lanczos,
    converged: bool,
    rel: tuple[float, float, float, float],
    to_max: int | None,
) -> EigenEstimate:
    """The extremes of the whole ``T`` (block diagonal after a restart, so they are the
    extremes over all blocks), their Ritz vectors, the basis and ``tr(T)``."""
    evals, evecs = torch.linalg.eigh(lanczos.tridiagonal())
    basis = lanczos.basis[: lanczos.k]
    coeffs = evecs[:, [-1, 0]].to(device=basis.device, dtype=basis.dtype)
    ritz = (coeffs.T @ basis).to(torch.float32)
    return EigenEstimate(
        lambda_max=float(evals[-1]),
        lambda_min=float(evals[0]),
        num_matvecs=lanczos.k,
        converged=converged,
        rel_residual_max=rel[0],
        rel_residual_min=rel[1],
        rel_error_max=rel[2],
        rel_error_min=rel[3],
        ritz_vectors=ritz,
        basis=basis,
        basis_trace=float(sum(lanczos.alphas)),
        matvecs_to_max=to_max,
    )


def lambda_min_error(eig: EigenEstimate) -> float:
    """The absolute Ritz residual bound of ``lambda_min`` (loss units per squared parameter
    unit): some eigenvalue lies within it of the reported value."""
    return eig.rel_residual_min * max(abs(eig.lambda_max), abs(eig.lambda_min))


def lambda_min_sign_known(eig: EigenEstimate) -> bool:
    """Whether the sign of the Hessian's smallest eigenvalue is settled by the estimate.

    Ritz values lie inside the spectrum, so a negative ``lambda_min`` proves a negative
    eigenvalue. A positive one proves a positive definite Hessian only when it exceeds its
    error bound (:func:`lambda_min_error`); between 0 and the bound the true smallest
    eigenvalue may be negative even when Lanczos reports convergence. (Like ``converged``,
    this cannot see an eigenvalue the Krylov space has not reached yet.)"""
    return eig.lambda_min < 0 or eig.lambda_min > lambda_min_error(eig)


def extreme_eigenvalues(
    matvec: MatVec,
    dim: int,
    max_iters: int = DEFAULT_MAX_ITERS,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    device: Device = None,
    warm_start: Tensor | None = None,
    bound: str = "residual",
) -> EigenEstimate:
    """Largest and smallest (signed) eigenvalues of the symmetric operator ``matvec`` by Lanczos.

    Starts from a Gaussian vector, or, with ``warm_start`` (m, dim: earlier Ritz vectors, e.g.
    the previous firing's ``ritz_vectors``), from :func:`warm_start_vector`. Adds one Lanczos
    vector (one matvec) at a time and, after each, computes the Ritz values ``theta`` of the
    tridiagonal ``T_k`` and their a-posteriori residual bounds ``r = |beta_k s_k|`` (``s_k``:
    last component of the Ritz vector; an eigenvalue lies within ``r``). The error bound of an
    extreme Ritz value is ``r`` (``bound="residual"``, the default) or ``min(r, r^2 / gap)``
    with the gap to the next Ritz value (``bound="gap"``: a Ritz value's error shrinks with
    the square of its residual once it is separated from the rest of the spectrum, so it
    stops sooner, but the gap is estimated from Ritz values and is too large when an unseen
    eigenvalue lies close to the extreme; :func:`gap_refined_bound`). Stops as soon as the
    error bound of the largest Ritz value is ``<= tol * |theta_max|`` and that of the smallest
    is ``<= tol * max(|theta_max|, |theta_min|)`` (the spectrum's scale: a zero eigenvalue
    converges), or
    after ``max_iters`` matvecs (``converged`` False). On a first breakdown (an invariant
    subspace: its Ritz values are exact eigenvalues, but the start vector may have missed the
    extremes) it restarts once from a random vector orthogonal to the basis, judges convergence
    on the new block and reports the extremes over both; a second breakdown counts as
    converged. When ``dim <= max_iters`` the run stops at the latest after ``dim`` steps,
    where the result is exact up to rounding. Eigenvalues are in loss units per squared
    parameter unit.
    """
    check_int("dim", dim, 1, hint=DIM_HINT)
    check_int("max_iters", max_iters, 1, example=DEFAULT_MAX_ITERS, hint="the most matvecs")
    check_number("tol", tol, low=0, low_open=True, example="1e-3", hint="relative tolerance")
    check_choice("bound", bound, ERROR_BOUNDS, hint="the Ritz value error bound that stops Lanczos")
    if warm_start is not None and (warm_start.ndim != 2 or warm_start.shape[1] != dim):
        raise ValueError(
            f"warm_start has shape {tuple(warm_start.shape)}; it must be (m, dim={dim}): "
            "earlier Ritz vectors of an operator of the same dimension"
        )
    capacity = min(max_iters, dim)
    if warm_start is None:
        start = random_vector("gaussian", dim, generator, device)
    else:
        start = warm_start_vector(warm_start, generator, device)
    lanczos = _Lanczos(matvec, dim, capacity, start, _default_basis_dtype(dim))
    tiny = torch.finfo(torch.float64).tiny
    block_start = 0  # a restart after a breakdown begins a new, decoupled block
    restarts_left = 1
    converged = False
    rel = (math.inf,) * 4
    to_max = None
    while lanczos.k < capacity:
        broke_down = lanczos.step()
        theta_max, theta_min, *bounds = _ritz_bounds(lanczos, block_start, bound)
        scale = max(abs(theta_max), abs(theta_min), tiny)
        # floor |theta_max| so an exactly-zero top eigenvalue gives a finite relative bound
        top = max(abs(theta_max), 1e-12 * scale)
        rel = (bounds[0] / top, bounds[1] / scale, bounds[2] / top, bounds[3] / scale)
        # Convergence is judged on the current block alone: it is a Lanczos run from a random
        # vector in the complement of the earlier block, so it sees the rest of the spectrum.
        # A breakdown is exact (an invariant subspace): its Ritz values are eigenvalues.
        converged = lanczos.exhausted or broke_down or max(rel[2:]) <= tol
        if to_max is None and (rel[2] <= tol or converged):
            to_max = lanczos.k
        if broke_down and restarts_left and not lanczos.exhausted and lanczos.k < capacity:
            # The start vector may have missed the extreme eigenvectors (it lies in an invariant
            # subspace): restart once from a random vector orthogonal to that subspace. A
            # random vector in the complement touches every remaining eigenspace, so a second
            # breakdown is conclusive.
            restarts_left -= 1
            lanczos.restart(generator)
            block_start = lanczos.k
            continue
        if converged:
            break
    return _estimate(lanczos, converged, rel, to_max)


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
