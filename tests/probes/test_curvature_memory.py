"""What a curvature firing leaves in memory: only the Ritz vectors of the warm start, never the
Lanczos basis or the gradient graph of the HVPs."""

from __future__ import annotations

import gc
import weakref

import torch
from harness import make_data, make_mlp

from optprobe.estimators.functional import supervised
from optprobe.models.lit_module import cross_entropy
from optprobe.probes import curvature
from optprobe.probes.target import ProbedModel


def test_firing_releases_the_basis_and_the_gradient_graph(monkeypatch):
    refs: list[weakref.ref] = []
    real_eig, real_hvp = curvature.extreme_eigenvalues, curvature.hvp_double_backward

    def spy_eig(*args, **kwargs):
        eig = real_eig(*args, **kwargs)
        refs.append(weakref.ref(eig.basis._base))  # the whole allocated basis, not the view
        return eig

    def spy_hvp(*args, **kwargs):
        matvec = real_hvp(*args, **kwargs)
        cells = [c.cell_contents for c in matvec.__closure__]
        graph = [t for t in cells if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        assert graph  # the flat gradient, whose grad_fn holds the double-backward graph
        refs.extend(weakref.ref(t) for t in graph)
        return matvec

    monkeypatch.setattr(curvature, "extreme_eigenvalues", spy_eig)
    monkeypatch.setattr(curvature, "hvp_double_backward", spy_hvp)
    x, y = make_data(16)
    net = make_mlp()
    dim = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    probe = curvature.CurvatureProbe(lanczos_iters=30, trace_max_matvecs=4)
    model = ProbedModel(net, supervised(cross_entropy))
    for _ in range(2):  # a cold and a warm firing
        values, _ = probe.measure(model, (x, y), opt)
        assert values["curv/lanczos_matvecs"] > 1
        gc.collect()
        assert refs and all(ref() is None for ref in refs)
        assert probe.ritz.shape == (2, dim)
        assert probe.ritz.untyped_storage().nbytes() == 2 * dim * 4  # not a view of the basis
