"""The optimizer geometries against closed forms on quadratics and dense linear algebra.

Ground truths: on f(x) = ½xᵀAx the gradient difference of a step Δ is AΔ, so
``smooth_lip_P`` = ‖AΔ‖_* / ‖Δ‖ is known by hand; its largest value over directions is the
operator norm (max_i A_ii / P_i for diagonal A in ‖·‖_P); each dual norm is attained by a
known maximizer (P⁻¹v, sign(v), U Vᵀ per block) and bounds ⟨v, Δ⟩ for every other Δ.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from optprobe.estimators.geometry import Geometry, geometry_quantities


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def quadratic_keys(geometry, a, delta):
    """Keys of a step Δ on f = ½xᵀAx from x = 0: g = 0, g⁺ = AΔ."""
    return geometry_quantities(geometry, delta, a @ delta, torch.zeros_like(delta))


def test_diagonal_p_lipschitz_along_coordinates_is_a_ii_over_p_i():
    a_diag, p = t(2.0, 8.0, 0.5), t(1.0, 4.0, 0.25)
    geometry = Geometry("diagonal", precond=p)
    for i in range(3):
        delta = torch.zeros(3, dtype=torch.float64)
        delta[i] = -0.3
        keys = quadratic_keys(geometry, torch.diag(a_diag), delta)
        assert keys["smooth_lip_P"] == pytest.approx(float(a_diag[i] / p[i]), rel=1e-14)
        assert keys["update_norm_P"] == pytest.approx(0.3 * math.sqrt(float(p[i])), rel=1e-14)


def test_diagonal_p_lipschitz_for_a_general_step_by_hand():
    # A = diag(2, 8), P = diag(1, 4), Δ = (1, 1): AΔ = (2, 8), ‖AΔ‖_{P,*} = √(4 + 16) = √20,
    # ‖Δ‖_P = √(1 + 4) = √5, ratio 2 (Euclidean: √68 / √2 = √34).
    geometry = Geometry("diagonal", precond=t(1.0, 4.0))
    keys = quadratic_keys(geometry, torch.diag(t(2.0, 8.0)), t(1.0, 1.0))
    assert keys["smooth_lip_P"] == pytest.approx(2.0, rel=1e-14)
    assert keys["update_norm_P"] == pytest.approx(math.sqrt(5.0), rel=1e-14)


def test_diagonal_p_lipschitz_never_exceeds_the_preconditioned_lambda_max():
    gen = torch.Generator().manual_seed(0)
    a_diag = torch.rand(6, generator=gen, dtype=torch.float64) * 5
    p = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    geometry = Geometry("diagonal", precond=p)
    bound = float((a_diag / p).max())  # λ_max(P⁻¹A)
    ratios = [
        quadratic_keys(geometry, torch.diag(a_diag), torch.randn(6, generator=gen).double())
        for _ in range(200)
    ]
    assert max(r["smooth_lip_P"] for r in ratios) <= bound * (1 + 1e-12)
    # and the descent lemma with L_P = λ_max(P⁻¹A) holds on every step of the quadratic
    x = torch.randn(6, generator=gen, dtype=torch.float64)
    for _ in range(50):
        delta = torch.randn(6, generator=gen, dtype=torch.float64)
        f = lambda z: 0.5 * float(z @ (a_diag * z))  # noqa: E731
        lemma = float((a_diag * x) @ delta) + 0.5 * bound * geometry.norm(delta) ** 2
        assert f(x + delta) - f(x) <= lemma + 1e-12


def test_linf_l1_pair_on_a_quadratic_by_hand():
    # A = [[2, 1], [1, 3]], a sign step Δ = -η (1, -1): AΔ = -η (1, -2), ‖·‖_1 = 3η, ‖Δ‖_∞ = η
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    eta = 0.01
    keys = quadratic_keys(Geometry("linf"), a, -eta * t(1.0, -1.0))
    assert keys["update_norm_P"] == pytest.approx(eta, rel=1e-14)
    assert keys["smooth_lip_P"] == pytest.approx(3.0, rel=1e-12)
    # the ℓ∞ -> ℓ1 operator norm of A: the max over sign vectors (brute force) is (1, 1): 7
    best = max(
        quadratic_keys(Geometry("linf"), a, t(*s))["smooth_lip_P"]
        for s in itertools.product((-1.0, 1.0), repeat=2)
    )
    assert best == pytest.approx(7.0, rel=1e-14)


SHAPES = (torch.Size([3, 4]), torch.Size([3]), torch.Size([2, 2, 2, 1]), torch.Size([]))


def test_spectral_and_nuclear_per_block_against_numpy_svd():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(sum(math.prod(s) for s in SHAPES), generator=gen, dtype=torch.float64)
    geometry = Geometry("spectral", shapes=SHAPES)
    parts = np.split(v.numpy(), np.cumsum([math.prod(s) for s in SHAPES])[:-1])
    mats = [p.reshape(s[0], -1) if len(s) >= 2 else p.reshape(1, -1) for p, s in zip(parts, SHAPES)]
    sv = [np.linalg.svd(m, compute_uv=False) for m in mats]
    assert geometry.norm(v) == pytest.approx(max(s.max() for s in sv), rel=1e-12)
    assert geometry.dual_norm(v) == pytest.approx(sum(s.sum() for s in sv), rel=1e-12)
    assert mats[1].shape == (1, 3)  # a bias: ℓ2, self-dual
    assert np.linalg.svd(mats[1], compute_uv=False)[0] == pytest.approx(np.linalg.norm(parts[1]))


@pytest.mark.parametrize("kind", ["diagonal", "linf", "spectral"])
def test_dual_norm_is_attained_and_bounds_every_pairing(kind):
    gen = torch.Generator().manual_seed(2)
    n = sum(math.prod(s) for s in SHAPES)
    p = torch.rand(n, generator=gen, dtype=torch.float64) + 0.05
    geometry = Geometry(kind, precond=p if kind == "diagonal" else None, shapes=SHAPES)
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    if kind == "diagonal":
        best = v / p
    elif kind == "linf":
        best = v.sign()
    else:  # U Vᵀ of every block: spectral norm 1 each, pairing = the nuclear norm
        blocks, start = [], 0
        for s in SHAPES:
            m = v[start : start + math.prod(s)].reshape(s[0] if len(s) >= 2 else 1, -1)
            u, _, vh = torch.linalg.svd(m, full_matrices=False)
            blocks.append((u @ vh).reshape(-1))
            start += math.prod(s)
        best = torch.cat(blocks)
    dual = geometry.dual_norm(v)
    assert float(v @ best) == pytest.approx(dual * geometry.norm(best), rel=1e-10)
    for _ in range(100):
        delta = torch.randn(n, generator=gen, dtype=torch.float64)
        assert float(v @ delta) <= dual * geometry.norm(delta) * (1 + 1e-12)


def test_matrix_quadratic_spectral_lipschitz_by_hand():
    # f(W) = ½‖W B‖_F² with B = diag(1, 2): the gradient difference is Δ B B ᵀ = Δ diag(1, 4);
    # for Δ = diag(1, 1) / 10: ‖Δ BBᵀ‖_nuc = 0.5, ‖Δ‖_2 = 0.1, ratio 5 (the sum of the curvatures)
    delta = torch.eye(2, dtype=torch.float64).reshape(-1) / 10
    diff = (torch.eye(2, dtype=torch.float64) / 10 @ torch.diag(t(1.0, 4.0))).reshape(-1)
    keys = geometry_quantities(
        Geometry("spectral", shapes=(torch.Size([2, 2]),)), delta, diff, torch.zeros(4).double()
    )
    assert keys["smooth_lip_P"] == pytest.approx(5.0, rel=1e-12)
    assert keys["update_norm_P"] == pytest.approx(0.1, rel=1e-12)


def test_bad_geometries_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="P_i > 0"):
        Geometry("diagonal", precond=t(1.0, 0.0))
    with pytest.raises(ValueError, match="shapes"):
        Geometry("spectral")
    with pytest.raises(ValueError, match="not one of"):
        Geometry("l2")
    with pytest.raises(ValueError, match="cover 12 entries"):
        Geometry("spectral", shapes=(torch.Size([3, 4]),)).norm(torch.zeros(5).double())
