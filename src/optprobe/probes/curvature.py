"""Curvature of the training loss: extreme Hessian eigenvalues, trace, spectral density.

Every estimator here is a pure function of a ``MatVec`` (``v -> H v`` on flat float64 vectors,
see :mod:`optprobe.probes.functional`) and the dimension ``dim`` of the parameter space. Nothing
touches a network or an optimizer, so every function can be checked against a dense matrix.

Units: if the loss is in nats and the parameters are dimensionless, Hessian eigenvalues and the
trace are in nats per squared parameter unit; the spectral density is in inverse eigenvalue units
(it integrates to one over eigenvalue). Preconditioned curvature (:func:`preconditioned_matvec`)
is in loss units per squared *preconditioned* step: for preconditioned gradient descent
``x -= lr * D^{-1} g`` on a quadratic, ``lr * lambda_max(D^{-1} H) < 2`` is the stability
condition (momentum changes the constant).

Random probe vectors come from ``generator`` (a ``torch.Generator``; ``None`` uses torch's global
RNG) so results are reproducible under ``torch.manual_seed``. Lanczos coefficients, Ritz values
and all reductions are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from optprobe.estimators.functional import (
    MatVec,
    ParamDict,
    functional_loss,
    hvp_double_backward,
    hvp_forward_over_reverse,
    trainable_params,
)
from optprobe.probes.base import ProbeCallback
from optprobe.validate import check_int

Device = torch.device | str | None

#: Above this dimension ``lanczos_tridiagonal`` stores its basis in float32 by default
#: (ResNet-18: 11M parameters, 30 float64 vectors would take 2.7 GB).
FLOAT64_BASIS_MAX_DIM = 1_000_000


# --------------------------------------------------------------------------------------------
# Results and argument checks
# --------------------------------------------------------------------------------------------


@dataclass
class EigenEstimate:
    """Extreme Hessian eigenvalues from Lanczos (loss units per squared parameter unit).

    ``rel_residual_*`` is the Ritz residual bound ``|beta_k s_k| / |theta|``: the true eigenvalue
    nearest to ``theta`` lies within ``rel_residual * |theta|`` of it. ``converged`` says both
    bounds are at most the requested ``tol``, or that Lanczos hit an invariant subspace or
    exhausted the space (both exact up to rounding). Lanczos only sees the part of the spectrum its start vector touches, so ``converged`` means
    "these are eigenvalues", which is "the extreme eigenvalues" with probability one for a
    Gaussian start vector.
    """

    lambda_max: float
    lambda_min: float
    num_matvecs: int
    converged: bool
    rel_residual_max: float
    rel_residual_min: float


def _check_int(name: str, value: int, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {fix}")


def _check_tol(tol: float) -> None:
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ValueError(
            f"tol must be a finite number > 0, got {tol!r}; pass a relative tolerance such as 1e-3"
        )


def _check_dim(dim: int) -> None:
    _check_int("dim", dim, 1, "pass the number of trainable parameters (length of the flat vector)")


# --------------------------------------------------------------------------------------------
# Random vectors and matvec application
# --------------------------------------------------------------------------------------------


def _sample(kind: str, dim: int, generator: torch.Generator | None, device: Device) -> Tensor:
    """A float64 random vector (``"rademacher"`` or ``"gaussian"``) on ``device``.

    Sampling happens on the generator's device (a CPU generator cannot fill a CUDA tensor) and
    the result is moved to ``device``.
    """
    sample_device = generator.device if generator is not None else device
    if kind == "rademacher":
        bits = torch.randint(0, 2, (dim,), generator=generator, device=sample_device)
        v = bits.to(torch.float64).mul_(2.0).sub_(1.0)
    elif kind == "gaussian":
        v = torch.randn(dim, generator=generator, device=sample_device, dtype=torch.float64)
    else:
        raise ValueError(f"start must be 'rademacher' or 'gaussian', got {kind!r}")
    return v.to(device) if device is not None else v


def _apply(matvec: MatVec, v: Tensor, dim: int) -> Tensor:
    """``matvec(v)`` as a flat float64 vector, with a shape check."""
    out = matvec(v)
    if out.shape != (dim,):
        raise ValueError(
            f"matvec returned shape {tuple(out.shape)} for an input of shape ({dim},); "
            "dim must equal the number of entries of the flat parameter vector"
        )
    return out.to(torch.float64)


def _require_finite(x: float, what: str) -> None:
    if not math.isfinite(x):
        raise FloatingPointError(f"{what} is {x}; the matvec produced non-finite values")


def _tridiagonal(alphas: Tensor, betas: Tensor) -> Tensor:
    """Dense symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``."""
    t = torch.diag(alphas)
    if betas.numel() > 0:
        t = t + torch.diag(betas, 1) + torch.diag(betas, -1)
    return t


# --------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------


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
        w = _apply(self.matvec, q, self.dim)
        alpha = float(torch.dot(w, q))
        _require_finite(alpha, "a Lanczos alpha")
        w = w - alpha * q
        if self._q_prev is not None:
            w = w - self._beta_prev * self._q_prev
        self.k += 1
        w = self._orthogonalize(w)
        beta = float(torch.linalg.vector_norm(w))
        _require_finite(beta, "a Lanczos beta")
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
            v = _sample("gaussian", self.dim, generator, self.basis.device)
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
        return _tridiagonal(*self.alphas_betas())


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
    _check_dim(dim)
    _check_int("num_iters", num_iters, 1, "pass the number of Lanczos steps (matvecs), e.g. 30")
    if basis_dtype is None:
        basis_dtype = _default_basis_dtype(dim)
    if basis_dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"basis_dtype must be torch.float32 or torch.float64, got {basis_dtype}; "
            "use float32 only to save memory on very large models"
        )
    num_iters = min(num_iters, dim)
    lanczos = _Lanczos(matvec, dim, num_iters, _sample(start, dim, generator, device), basis_dtype)
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
    _check_dim(dim)
    _check_int("max_iters", max_iters, 1, "pass the maximum number of matvecs, e.g. 30")
    _check_tol(tol)
    capacity = min(max_iters, dim)
    start = _sample("gaussian", dim, generator, device)
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


# --------------------------------------------------------------------------------------------
# Power iteration and Hutchinson
# --------------------------------------------------------------------------------------------


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
    _check_dim(dim)
    _check_int("max_iters", max_iters, 1, "pass the maximum number of matvecs, e.g. 1000")
    _check_tol(tol)
    v = _sample("gaussian", dim, generator, device)
    v = v / torch.linalg.vector_norm(v)
    previous = math.nan
    rayleigh = math.nan
    for n in range(1, max_iters + 1):
        w = _apply(matvec, v, dim)
        rayleigh = float(torch.dot(v, w))
        _require_finite(rayleigh, "the Rayleigh quotient")
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0.0:  # v is in the null space (H = 0 with probability one)
            return 0.0, n, True
        if abs(rayleigh - previous) <= tol * abs(rayleigh):
            return rayleigh, n, True
        previous = rayleigh
        v = w / norm
    return rayleigh, max_iters, False


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_samples: int,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> tuple[float, float, int]:
    """Hutchinson estimate of ``tr(H)`` from Rademacher probes ``z``: the mean of ``z^T H z``.

    Returns ``(trace, stderr, num_matvecs)``: the trace in loss units per squared parameter
    unit, its standard error (sample standard deviation / sqrt(num_samples); ``inf`` when
    ``num_samples == 1``), and the number of matvecs used (= ``num_samples``).
    """
    _check_dim(dim)
    _check_int("num_samples", num_samples, 1, "pass the number of Rademacher probes, e.g. 100")
    values = torch.empty(num_samples, dtype=torch.float64)
    for i in range(num_samples):
        z = _sample("rademacher", dim, generator, device)
        values[i] = torch.dot(z, _apply(matvec, z, dim)).cpu()
    trace = float(values.mean())
    _require_finite(trace, "the Hutchinson trace")
    stderr = (
        float(values.std(correction=1)) / math.sqrt(num_samples) if num_samples > 1 else math.inf
    )
    return trace, stderr, num_samples


# --------------------------------------------------------------------------------------------
# Spectral density (stochastic Lanczos quadrature)
# --------------------------------------------------------------------------------------------


def spectral_density(
    matvec: MatVec,
    dim: int,
    num_probes: int = 1,
    num_iters: int = 30,
    generator: torch.Generator | None = None,
    device: Device = None,
    grid_size: int = 200,
    sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed eigenvalue density of ``matvec`` by stochastic Lanczos quadrature (SLQ).

    For each of ``num_probes`` normalized Rademacher vectors, ``num_iters`` Lanczos steps give
    Ritz values ``theta_i`` with weights ``tau_i`` (squared first components of the eigenvectors
    of ``T``; they sum to 1). The density is the probe average of ``sum_i tau_i N(x; theta_i,
    sigma^2)``, with ``sigma`` defaulting to ``max(range / 50, 1e-6 * max|theta|)`` (``range``:
    spread of all Ritz values; absolute floor 1e-12), on ``grid_size`` points spanning
    ``[min theta - 3 sigma, max theta + 3 sigma]``, normalized so the trapezoid integral over the
    grid is 1.

    Returns ``(grid, density)`` as float64 numpy arrays of shape (grid_size,): eigenvalues (loss
    units per squared parameter unit) and density (their inverse). ``num_probes * num_iters``
    matvecs at most. The density's mean estimates ``tr(H) / dim``.
    """
    _check_dim(dim)
    _check_int("num_probes", num_probes, 1, "pass the number of random start vectors, e.g. 1-10")
    _check_int("num_iters", num_iters, 1, "pass the number of Lanczos steps per probe, e.g. 30")
    _check_int("grid_size", grid_size, 2, "pass the number of grid points, e.g. 200")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(
            f"sigma must be a finite number > 0 or None, got {sigma!r}; pass None for range / 50"
        )
    nodes: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for _ in range(num_probes):
        alphas, betas, _ = lanczos_tridiagonal(
            matvec, dim, num_iters, generator=generator, device=device, start="rademacher"
        )
        evals, evecs = torch.linalg.eigh(_tridiagonal(alphas, betas))
        nodes.append(evals.numpy())
        weights.append((evecs[0, :] ** 2).numpy() / num_probes)
    theta = np.concatenate(nodes)
    tau = np.concatenate(weights)
    lo, hi = float(theta.min()), float(theta.max())
    if sigma is None:
        sigma = max((hi - lo) / 50.0, 1e-6 * max(abs(lo), abs(hi)), 1e-12)
    grid = np.linspace(lo - 3.0 * sigma, hi + 3.0 * sigma, grid_size, dtype=np.float64)
    z = (grid[:, None] - theta[None, :]) / sigma
    density = (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2.0 * math.pi))) @ tau
    area = float(np.sum(0.5 * (density[1:] + density[:-1]) * np.diff(grid)))
    return grid, density / area


# --------------------------------------------------------------------------------------------
# Preconditioning
# --------------------------------------------------------------------------------------------


def preconditioned_matvec(matvec: MatVec, precond_diag: Tensor) -> MatVec:
    """``v -> D^{-1/2} H D^{-1/2} v`` for the positive diagonal ``D = diag(precond_diag)``.

    The operator is symmetric and similar to ``D^{-1} H``, so its eigenvalues are those of the
    preconditioned Hessian (for Adam, ``D = sqrt(v_hat) + eps``: the preconditioned sharpness,
    in loss units per squared preconditioned step). ``precond_diag`` is a flat vector on the
    matvec's device; it is used in float64.
    """
    if precond_diag.dim() != 1:
        raise ValueError(
            f"precond_diag must be a flat vector, got shape {tuple(precond_diag.shape)}; "
            "flatten the per-parameter preconditioner (functional.flatten)"
        )
    d = precond_diag.detach().to(torch.float64)
    bad = ~(torch.isfinite(d) & (d > 0))
    if bool(bad.any()):
        raise ValueError(
            f"precond_diag must be finite and > 0 everywhere; {int(bad.sum())} of {d.numel()} "
            f"entries are not (min {float(d.min())}); add Adam's eps or clamp before passing it"
        )
    scale = d.rsqrt()

    def precond(v: Tensor) -> Tensor:
        return scale * matvec(scale * v).to(torch.float64)

    return precond


# --------------------------------------------------------------------------------------------
# Lightning callback
# --------------------------------------------------------------------------------------------

HVP_MODES = ("auto", "double_backward", "forward_over_reverse")


def forward_mode_blocker(net: nn.Module) -> str | None:
    """Why ``torch.func`` forward-over-reverse HVPs cannot run on ``net`` in training mode.

    Rule-based (no trial pass): batch-norm or instance-norm layers that update running
    statistics in place, ``nn.MultiheadAttention`` (scaled-dot-product kernels without
    forward-mode AD) and timm blocks with ``fused_attn`` on. ``None`` when nothing blocks it.
    The modes of ``net`` are put back as they were.
    """
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.train()
        for name, m in net.named_modules():
            label = f"{type(m).__name__} {name or '<root>'!r}"
            norms = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
            if isinstance(m, norms) and m.training and m.track_running_stats:
                return (
                    f"{label} updates its running statistics in place in training mode, "
                    "which forward-mode AD (torch.func.jvp) cannot do"
                )
            if isinstance(m, nn.MultiheadAttention):
                return f"{label} calls fused attention kernels that lack forward-mode AD"
            if getattr(m, "fused_attn", False) is True:
                return f"{label} uses a fused attention kernel without forward-mode AD"
    finally:
        for m, mode in modes:
            m.training = mode
    return None


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind a ``LightningOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: ParamDict) -> Tensor | None:
    """Adam's current diagonal preconditioner ``sqrt(v_hat) + eps`` as one flat float64 vector.

    ``v_hat = exp_avg_sq / (1 - beta2^step)`` (``max_exp_avg_sq`` with amsgrad), in the order
    of ``params``: the preconditioner of the last applied step. ``None`` when some parameter
    has no Adam-type state yet (before the first step) or is not in the optimizer.
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for p in params.values():
        group, state = group_of.get(id(p)), optimizer.state.get(p, {})
        if group is None or "betas" not in group or "exp_avg_sq" not in state:
            return None
        step = float(state["step"])
        if step < 1:
            return None
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = v.detach().to(torch.float64) / (1.0 - float(group["betas"][1]) ** step)
        parts.append((v_hat.sqrt() + float(group["eps"])).reshape(-1))
    return torch.cat(parts)


class CurvatureProbe(ProbeCallback):
    """Curvature of the training loss at x_t: extreme Hessian eigenvalues, trace, sharpness.

    On every probed step, at the parameters x_t before the update and on the probe batch
    (``batch``: the step's batch, or a fixed one), the loss ``f(x) = loss_fn(net(inputs; x),
    targets)`` is evaluated functionally with the network in its training mode (BatchNorm uses
    batch statistics, as in training; dropout off; live buffers untouched) and the Hessian
    ``H = d^2 f / dx^2`` over all trainable parameters is probed through Hessian-vector
    products (HVPs). Eigenvalues and the trace are in loss units per squared parameter unit
    (nats / param^2 for cross-entropy). Logged keys:

    - ``curv/lambda_max``, ``curv/lambda_min``: largest and smallest (signed) eigenvalue of H
      by Lanczos with full reorthogonalization (:func:`extreme_eigenvalues`), stopped when
      both Ritz residual bounds are ``<= tol`` relative, or after ``lanczos_iters`` HVPs.
    - ``curv/lanczos_matvecs``: HVPs Lanczos used (<= ``lanczos_iters``).
    - ``curv/lanczos_converged``: 1 if both extremes met ``tol`` (or Lanczos exhausted the
      space), else 0.
    - ``curv/trace``, ``curv/trace_stderr``: Hutchinson estimate of tr H with
      ``hutchinson_samples`` Rademacher probes, and its standard error (sample std / sqrt(n)).
    - ``curv/precond_lambda_max`` (Adam-type optimizers, once they have state):
      ``lambda_max(P^-1 H)`` with ``P = diag(sqrt(v_hat) + eps)``,
      ``v_hat = exp_avg_sq / (1 - beta2^step)`` from the optimizer state at x_t (the
      preconditioner of the last applied step), by Lanczos on ``P^-1/2 H P^-1/2``; in loss
      units per squared preconditioned step. ``curv/precond_lanczos_converged``: its 0/1 flag.
    - ``curv/sharpness_ratio``: ``lr * lambda_max`` (SGD with or without momentum, and any
      optimizer other than Adam-type) or ``lr * lambda_max(P^-1 H)`` (Adam-type), with
      ``lr = param_groups[0]["lr"]``; dimensionless. On a quadratic the iteration is stable
      while it stays below the threshold (Cohen et al. 2021; 2022 for Adam).
    - ``curv/stability_threshold``: that threshold: 2 (SGD), ``(2 + 2 beta) / (1 - dampening)``
      (heavy-ball momentum beta), ``(2 + 2 beta) / (1 + 2 beta)`` (Nesterov),
      ``(2 + 2 beta1) / (1 - beta1)`` (Adam-type; 38 for beta1 = 0.9). Not logged for other
      optimizers. For Adam-type optimizers before their first step neither the ratio nor the
      threshold is logged.
    - ``curv/esd_saved`` (``esd=True``): 1 when the spectral density by stochastic Lanczos
      quadrature (:func:`spectral_density`, ``esd_probes`` x ``esd_iters`` HVPs) was written
      to ``<default_root_dir>/probes/esd/step_<t>.npz`` (arrays ``grid``: eigenvalue,
      ``density``: per eigenvalue unit, integrating to 1) with a PNG plot next to it (also sent
      to W&B as ``curv/esd`` when a W&B logger is attached).
    - ``curv/skipped``: running count of skipped probe steps, logged instead of the values
      when a value is non-finite (NaN/inf loss or HVP).

    HVPs per probed step: one forward + backward with ``create_graph`` (double backward), then
    at most ``lanczos_iters`` (+ ``lanczos_iters`` for Adam-type) + ``hutchinson_samples``
    (+ ``esd_probes * esd_iters``) HVPs, each one backward pass through the gradient graph
    (double_backward) or one jvp of the gradient (forward_over_reverse, ~2-3 passes).

    Args (Hydra ``probes.curvature.*``; the cadence and batch arguments are the base's):
        lanczos_iters: maximum HVPs for each Lanczos run (>= 1).
        tol: relative tolerance on the Ritz residual bounds (> 0).
        hutchinson_samples: Rademacher probes for the trace (>= 2, for a standard error).
        esd: also compute and save the spectral density.
        esd_iters, esd_probes: Lanczos steps per probe vector and probe vectors of the density.
        hvp: ``auto`` (double_backward, the cheaper one on CPU), ``double_backward`` (works
            with BatchNorm in training mode) or ``forward_over_reverse`` (torch.func).
        seed: seed of the probe's own random generator (start and probe vectors; its state
            is checkpointed, so a resumed run draws the same vectors).
    """

    family = "curv"
    default_name = "curvature"

    def __init__(
        self,
        every_n_steps: int = 50,
        lanczos_iters: int = 20,
        tol: float = 1e-3,
        hutchinson_samples: int = 10,
        esd: bool = False,
        esd_iters: int = 30,
        esd_probes: int = 1,
        hvp: str = "auto",
        seed: int = 0,
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_steps, **schedule)
        self.last_lambda_max: float | None = None  # read by the step probe (lambda_max source)
        self.max_lambda_max = -math.inf
        self.lanczos_iters = check_int(f"{self.config_key}.lanczos_iters", lanczos_iters, 1)
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < math.inf:
            raise ValueError(
                f"{self.config_key}.tol must be a finite number > 0, got {tol!r}; e.g. 1e-3"
            )
        self.tol = float(tol)
        self.hutchinson_samples = check_int(
            f"{self.config_key}.hutchinson_samples", hutchinson_samples, 2
        )
        if not isinstance(esd, bool):
            raise ValueError(f"{self.config_key}.esd must be true or false, got {esd!r}")
        self.esd = esd
        self.esd_iters = check_int(f"{self.config_key}.esd_iters", esd_iters, 1)
        self.esd_probes = check_int(f"{self.config_key}.esd_probes", esd_probes, 1)
        if hvp not in HVP_MODES:
            raise ValueError(
                f"{self.config_key}.hvp must be one of {', '.join(HVP_MODES)}, got {hvp!r}; "
                f"e.g. {self.config_key}.hvp=double_backward"
            )
        self.hvp = hvp
        self.hvp_mode = "double_backward" if hvp == "auto" else hvp
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(
                f"{self.config_key}.seed must be an integer, got {seed!r}; e.g. {self.config_key}.seed=0"
            )
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.hvp_mode == "forward_over_reverse":
            reason = forward_mode_blocker(pl_module.net)
            if reason is not None:
                raise ValueError(
                    f"{self.config_key}.hvp=forward_over_reverse cannot run on this network: {reason}. "
                    f"Use {self.config_key}.hvp=double_backward (or auto)."
                )

    # ----------------------------------------------------------------- measurement
    def matvec(self, net: nn.Module, loss_fn: Any, inputs: Tensor, targets: Tensor) -> MatVec:
        """``v -> H v`` of the loss at the live parameters of ``net`` (flat float64 vectors),
        on the global batch under DDP (every rank draws the same vectors from its generator)."""
        loss_of_params = functional_loss(net, inputs, targets, loss_fn)
        params = {k: p.detach() for k, p in trainable_params(net).items()}
        if self.hvp_mode == "forward_over_reverse":
            local = hvp_forward_over_reverse(loss_of_params, params)
        else:
            local = hvp_double_backward(loss_of_params, params)
        return lambda v: self.global_mean(local(v))

    def measure(
        self,
        net: nn.Module,
        loss_fn: Any,
        inputs: Tensor,
        targets: Tensor,
        optimizer: Any = None,
    ) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
        """The logged values (without ``curv/esd_saved``) and the ESD ``(grid, density)``.

        Draws from the probe's generator; raises FloatingPointError on non-finite values.
        """
        params = trainable_params(net)
        dim = sum(p.numel() for p in params.values())
        device = next(iter(params.values())).device
        matvec = self.matvec(net, loss_fn, inputs, targets)
        rng = {"generator": self.generator, "device": device}
        eig = extreme_eigenvalues(matvec, dim, self.lanczos_iters, self.tol, **rng)
        trace, stderr, _ = hutchinson_trace(matvec, dim, self.hutchinson_samples, **rng)
        values = {
            "curv/lambda_max": eig.lambda_max,
            "curv/lambda_min": eig.lambda_min,
            "curv/lanczos_matvecs": float(eig.num_matvecs),
            "curv/lanczos_converged": float(eig.converged),
            "curv/trace": trace,
            "curv/trace_stderr": stderr,
        }
        if optimizer is not None:
            values.update(self._sharpness(_torch_optimizer(optimizer), params, eig, matvec, dim))
        esd = None
        if self.esd:
            esd = spectral_density(matvec, dim, self.esd_probes, self.esd_iters, **rng)
        return values, esd

    def _sharpness(
        self,
        optimizer: torch.optim.Optimizer,
        params: ParamDict,
        eig: EigenEstimate,
        matvec: MatVec,
        dim: int,
    ) -> dict[str, float]:
        group = optimizer.param_groups[0]
        lr = float(group["lr"])
        if isinstance(optimizer, torch.optim.SGD):
            beta = float(group.get("momentum", 0.0))
            dampening = float(group.get("dampening", 0.0))
            if beta == 0.0:
                threshold = 2.0
            elif group.get("nesterov"):
                threshold = (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)
            else:
                threshold = (2.0 + 2.0 * beta) / (1.0 - dampening) if dampening < 1 else math.inf
            return {
                "curv/sharpness_ratio": lr * eig.lambda_max,
                "curv/stability_threshold": threshold,
            }
        if "betas" in group and any("exp_avg_sq" in s for s in optimizer.state.values()):
            precond = adam_preconditioner(optimizer, params)
            if precond is None:
                return {}
            device = next(iter(params.values())).device
            pre = extreme_eigenvalues(
                preconditioned_matvec(matvec, precond.to(device)),
                dim,
                self.lanczos_iters,
                self.tol,
                generator=self.generator,
                device=device,
            )
            beta1 = float(group["betas"][0])
            return {
                "curv/precond_lambda_max": pre.lambda_max,
                "curv/precond_lanczos_converged": float(pre.converged),
                "curv/sharpness_ratio": lr * pre.lambda_max,
                "curv/stability_threshold": (2.0 + 2.0 * beta1) / (1.0 - beta1),
            }
        if "betas" in group:  # Adam-type before its first step: no preconditioner yet
            return {}
        return {"curv/sharpness_ratio": lr * eig.lambda_max}

    @override
    def before_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any, step: int
    ) -> None:
        inputs, targets = self.probe_batch(pl_module)
        try:
            values, esd = self.measure(pl_module.net, pl_module.loss_fn, inputs, targets, optimizer)
        except FloatingPointError as err:
            values, esd = self.skip(f"step {step}: {err}"), None
        except RuntimeError as err:
            if self.hvp_mode != "forward_over_reverse":
                raise
            raise RuntimeError(
                f"{self.config_key}.hvp=forward_over_reverse failed on this network ({err}); "
                f"use {self.config_key}.hvp=double_backward"
            ) from err
        if not all(math.isfinite(v) for v in values.values()):
            bad = sorted(k for k, v in values.items() if not math.isfinite(v))
            values, esd = self.skip(f"step {step}: non-finite {', '.join(bad)}"), None
        if "curv/lambda_max" in values:
            self.num_probed += 1
            self.last_lambda_max = values["curv/lambda_max"]
            self.max_lambda_max = max(self.max_lambda_max, self.last_lambda_max)
        if esd is not None and trainer.is_global_zero:
            self.save_esd(trainer, step, *esd)
            values["curv/esd_saved"] = 1.0
        self.log_values(trainer, pl_module, values)

    def save_esd(self, trainer: pl.Trainer, step: int, grid: np.ndarray, density: np.ndarray):
        """Write ``step_<t>.npz`` (grid, density) and ``step_<t>.png`` under
        ``<default_root_dir>/probes/esd``; log the PNG to W&B if a W&B logger is attached."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from pytorch_lightning.loggers import WandbLogger

        folder = Path(trainer.default_root_dir) / "probes" / "esd"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"step_{step}.npz", grid=grid, density=density, step=step)
        fig = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(grid, np.maximum(density, density.max() * 1e-8))
        ax.set_yscale("log")
        ax.set_xlabel("Hessian eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(f"Hessian spectral density, step {step}")
        fig.tight_layout()
        png = folder / f"step_{step}.png"
        fig.savefig(png, dpi=100)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="curv/esd", images=[str(png)], step=trainer.global_step)
        return png

    @override
    def resolved_settings(self) -> dict[str, Any]:
        return {"hvp": self.hvp_mode}

    @override
    def final_summary(self) -> dict[str, Any]:
        return {
            **super().final_summary(),
            "hvp": self.hvp_mode,
            "last_lambda_max": self.last_lambda_max,
            "max_lambda_max": self.max_lambda_max,
        }

    # ----------------------------------------------------------------- state
    @override
    def extra_state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "seed": self.seed,
            "last_lambda_max": self.last_lambda_max,
            "max_lambda_max": self.max_lambda_max,
        }

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.last_lambda_max = state.get("last_lambda_max")
        self.max_lambda_max = state.get("max_lambda_max", -math.inf)
