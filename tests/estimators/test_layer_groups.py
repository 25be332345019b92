"""Parameter groups named from the model, and the per-group step quantities against brute force
on each group's own parameter tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optprobe.estimators.layer_groups import ParamGroups, group_names, group_step_quantities
from optprobe.models.gpt import GPT
from optprobe.models.simple import MLP, LogisticRegression, SmallCNN


def gpt(tied: bool = True) -> GPT:
    torch.manual_seed(0)
    net = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=16)
    if not tied:
        net.head.weight = nn.Parameter(torch.randn(11, 16) * 0.02)
    return net


def expected_gpt_group(name: str) -> str:
    """The group of a GPT parameter, read off its path by hand."""
    parts = name.split(".")
    if parts[0] in ("tok_emb", "pos_emb"):
        return "embedding"
    if parts[0] == "head":
        return "head"
    if parts[0] == "ln_f" or parts[2] in ("ln1", "ln2"):
        return "norm"
    return {"attn": "attention", "mlp": "mlp"}[parts[2]]


def test_gpt_groups_embedding_attention_mlp_norm_head():
    untied = group_names(gpt(tied=False))
    assert untied == {n: expected_gpt_group(n) for n in untied}
    assert set(untied.values()) == {"embedding", "attention", "mlp", "norm", "head"}
    # the token embedding is the output head's weight too: both groups, joined
    tied = group_names(gpt())
    assert "head.weight" not in tied
    assert tied["tok_emb.weight"] == "embedding_head"
    assert {n: g for n, g in tied.items() if n != "tok_emb.weight"} == {
        n: g for n, g in untied.items() if n not in ("tok_emb.weight", "head.weight")
    }
    groups = ParamGroups.of(gpt(), dict(gpt().named_parameters()))
    assert groups.names == ("embedding", "embedding_head", "attention", "mlp", "norm")


def test_small_models_groups():
    mlp = group_names(MLP((1, 4, 4), 3, hidden=(8, 8)))
    assert mlp == {
        "layers.0.weight": "mlp",
        "layers.0.bias": "mlp",
        "layers.2.weight": "mlp",
        "layers.2.bias": "mlp",
        "layers.4.weight": "head",
        "layers.4.bias": "head",
    }
    cnn = group_names(SmallCNN((3, 8, 8), 10))
    assert cnn == {
        **{f"features.{i}.{w}": "conv" for i in (0, 3) for w in ("weight", "bias")},
        "classifier.weight": "head",
        "classifier.bias": "head",
    }
    assert set(group_names(LogisticRegression((4,), 3)).values()) == {"head"}


def test_timm_groups_by_module_type():
    from optprobe.models.timm_net import create_timm_model

    resnet = group_names(create_timm_model("resnet18", 10, (3, 16, 16)))
    assert resnet["conv1.weight"] == resnet["layer2.0.downsample.0.weight"] == "conv"
    assert resnet["layer2.0.downsample.1.weight"] == resnet["bn1.bias"] == "norm"
    assert resnet["fc.weight"] == "head" and set(resnet.values()) == {"conv", "norm", "head"}
    vit = group_names(
        create_timm_model("vit_tiny_patch16_224", 10, (3, 16, 16), img_size=16, patch_size=8)
    )
    assert vit["cls_token"] == vit["pos_embed"] == vit["patch_embed.proj.weight"] == "embedding"
    assert vit["blocks.0.attn.qkv.weight"] == "attention"
    assert vit["blocks.0.mlp.fc2.bias"] == "mlp"
    assert vit["blocks.0.norm1.weight"] == vit["norm.bias"] == "norm"
    assert vit["head.weight"] == "head"
    assert set(vit.values()) == {"embedding", "attention", "mlp", "norm", "head"}


@pytest.mark.parametrize("tied", [True, False])
def test_group_quantities_match_brute_force_and_sum_to_the_global_ones(tied):
    net = gpt(tied).double()
    params = dict(net.named_parameters())
    names = group_names(net)
    gen = torch.Generator().manual_seed(1)
    vecs = {
        k: {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
        for k in ("delta", "g_new", "g_old")
    }
    flat = {k: torch.cat([t.reshape(-1) for t in v.values()]) for k, v in vecs.items()}
    out = group_step_quantities(
        ParamGroups.of(net, params), flat["delta"], flat["g_new"], flat["g_old"]
    )
    assert set(out) == set(names.values())
    for group, got in out.items():
        members = [n for n in params if names[n] == group]
        d, gn, go = (torch.cat([vecs[k][n].reshape(-1) for n in members]) for k in vecs)
        cos = torch.nn.functional.cosine_similarity
        expected = {
            "lin_new": float(gn @ d),
            "lin_old": float(go @ d),
            "update_norm": float(d.norm()),
            "grad_norm": float(go.norm()),
            "update_cos_new": float(cos(gn, d, dim=0)),
            "update_cos_old": float(cos(go, d, dim=0)),
            "smooth_lip": float((gn - go).norm() / d.norm()),
        }
        assert got == pytest.approx(expected, rel=1e-12), group
    total = {k: sum(v[k] for v in out.values()) for k in ("lin_new", "lin_old")}
    assert total["lin_new"] == pytest.approx(float(flat["g_new"] @ flat["delta"]), rel=1e-12)
    assert total["lin_old"] == pytest.approx(float(flat["g_old"] @ flat["delta"]), rel=1e-12)
    sq = sum(v["update_norm"] ** 2 for v in out.values())
    assert math.sqrt(sq) == pytest.approx(float(flat["delta"].norm()), rel=1e-12)


def test_group_without_update_has_undefined_ratios_and_no_old_point_keys():
    net = MLP((1, 2, 2), 2, hidden=(3,)).double()
    params = dict(net.named_parameters())
    groups = ParamGroups.of(net, params)
    n_mlp = sum(p.numel() for n, p in params.items() if n.startswith("layers.0"))
    delta = torch.ones(sum(p.numel() for p in params.values()), dtype=torch.float64)
    delta[:n_mlp] = 0.0
    out = group_step_quantities(groups, delta, torch.ones_like(delta))
    assert set(out["mlp"]) == {"lin_new", "update_norm", "update_cos_new"}
    assert out["mlp"]["update_norm"] == 0.0 and math.isnan(out["mlp"]["update_cos_new"])
    assert out["head"]["update_cos_new"] == pytest.approx(1.0)


def test_parameters_of_another_network_are_refused():
    with pytest.raises(ValueError, match="not parameters of the network"):
        ParamGroups.of(MLP((1, 2, 2), 2), {"elsewhere.weight": torch.zeros(2)})
