"""The step probe's per-layer keys (``probes.step.per_layer``): each group's values against
plain autograd on the recorded steps, sums over groups against the global keys, no change to
the trajectory, and the fresh-batch scheme's own prefix."""

from __future__ import annotations

import copy

import pytest
import torch
from harness import fit, make_data, make_mlp
from torch.nn import functional as F

from optprobe.estimators.layer_groups import group_names
from optprobe.models.gpt import GPT
from optprobe.probes.step import StepProbe


def logged_groups(sink, prefix: str) -> set[str]:
    return {k.split("/")[1] for row in sink.rows.values() for k in row if k.startswith(prefix)}


def group_sum_matches(sink, step_prefix: str, layer_prefix: str) -> int:
    """Check, at every probed step, that lin_old/lin_new and ‖Δ‖² summed over the groups are
    the global keys; returns the number of steps checked."""
    groups = logged_groups(sink, f"{layer_prefix}/")
    steps = sink.series(f"{step_prefix}/lin_new")
    for step in steps:
        for key in ("lin_old", "lin_new"):
            total = sum(sink.series(f"{layer_prefix}/{g}/{key}")[step] for g in groups)
            assert total == pytest.approx(sink.series(f"{step_prefix}/{key}")[step], rel=1e-9)
        sq = sum(sink.series(f"{layer_prefix}/{g}/update_norm")[step] ** 2 for g in groups)
        norm = sink.series(f"{step_prefix}/update_norm")[step]
        assert sq == pytest.approx(norm**2, rel=1e-9)
    return len(steps)


def test_mlp_groups_match_autograd_on_the_recorded_steps():
    x, y = make_data(96)
    net = make_mlp()
    opt = lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9)  # noqa: E731
    _, _, rec, sink = fit(
        copy.deepcopy(net), x, y, [StepProbe(per_layer=True)], steps=4, optimizer=opt
    )
    names = group_names(net)
    assert logged_groups(sink, "layer/") == {"mlp", "head"}
    assert group_sum_matches(sink, "step", "layer") == 4
    for t, s in enumerate(rec.steps):
        model = copy.deepcopy(net)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(s.next_params[name])
        loss = sum(F.cross_entropy(model(bx), by) for bx, by in s.batches) / len(s.batches)
        g_new = dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))
        for group in ("mlp", "head"):
            members = [n for n in names if names[n] == group]
            d = torch.cat([(s.next_params[n] - s.params[n]).reshape(-1) for n in members])
            g_old = torch.cat([s.grads[n].reshape(-1) for n in members])
            gn = torch.cat([g_new[n].reshape(-1) for n in members])
            expected = {
                "lin_old": float(g_old @ d),
                "lin_new": float(gn @ d),
                "update_norm": float(d.norm()),
                "smooth_lip": float((gn - g_old).norm() / d.norm()),
                "update_cos_old": float(F.cosine_similarity(g_old, d, dim=0)),
            }
            for key, value in expected.items():
                got = sink.series(f"layer/{group}/{key}")[t]
                assert got == pytest.approx(value, rel=1e-9, abs=1e-14), (t, group, key)


def test_gpt_groups_sum_to_the_global_keys_and_leave_the_trajectory_alone():
    torch.manual_seed(0)
    net = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=16).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (48, 8), generator=gen)
    y = torch.roll(x, -1, dims=1)
    opt = lambda p: torch.optim.AdamW(p, lr=1e-2)  # noqa: E731
    probe = StepProbe(per_layer=True)
    _, probed, _, sink = fit(copy.deepcopy(net), x, y, [probe], steps=3, optimizer=opt)
    _, plain, _, _ = fit(copy.deepcopy(net), x, y, [], steps=3, optimizer=opt)
    for a, b in zip(probed.net.parameters(), plain.net.parameters()):
        assert torch.equal(a, b)
    assert logged_groups(sink, "layer/") == {
        "embedding",
        "embedding_head",
        "attention",
        "mlp",
        "norm",
    }
    assert group_sum_matches(sink, "step", "layer") == 3


def test_fresh_batch_scheme_logs_layer_fresh_and_off_by_default():
    x, y = make_data(64)
    probes = [StepProbe(), StepProbe(scheme="fresh_batch", name="step_fresh", per_layer=True)]
    _, _, _, sink = fit(make_mlp(), x, y, probes, steps=3)
    assert not logged_groups(sink, "layer/")
    assert logged_groups(sink, "layer_fresh/") == {"mlp", "head"}
    assert group_sum_matches(sink, "step_fresh", "layer_fresh") == 2


def test_per_layer_must_be_a_flag():
    with pytest.raises(ValueError, match="probes.step.per_layer"):
        StepProbe(per_layer="yes")
