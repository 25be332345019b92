"""MuonWithAdamW: which parameters Muon takes, and its steps and state against torch.optim.Muon
and torch.optim.AdamW run separately on copies of the same network."""

from __future__ import annotations

import copy

import torch
from torch import nn

from optprobe.models.gpt import GPT
from optprobe.models.simple import MLP
from optprobe.optim.muon import MuonWithAdamW, muon_weights

KW = {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.01, "adjust_lr_fn": "match_rms_adamw"}


def names(net: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in net.named_parameters() if id(p) in ids}


def test_muon_takes_hidden_linear_weights_only():
    mlp = MLP(input_shape=[8], num_classes=3, hidden=[16, 16])
    assert names(mlp, muon_weights(mlp)) == {"layers.0.weight", "layers.2.weight"}
    gpt = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
    expected = {f"blocks.0.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    assert names(gpt, muon_weights(gpt)) == expected  # not the embeddings nor the tied head


def _random_grads(net: nn.Module, gen: torch.Generator) -> None:
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_steps_and_state_dict_match_muon_and_adamw_run_apart():
    torch.manual_seed(0)
    net = MLP(input_shape=[6], num_classes=3, hidden=[5, 4])
    ref = copy.deepcopy(net)
    opt = MuonWithAdamW(net, adamw_lr=0.003, adamw_weight_decay=0.1, **KW)
    matrices = muon_weights(ref)
    rest = [p for p in ref.parameters() if all(p is not m for m in matrices)]
    muon = torch.optim.Muon(matrices, **KW)
    adamw = torch.optim.AdamW(rest, lr=0.003, weight_decay=0.1)
    assert [g["algorithm"] for g in opt.param_groups] == ["muon", "adamw"]
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(3):
        _random_grads(net, gen_a)
        _random_grads(ref, gen_b)
        opt.step()
        muon.step()
        adamw.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # a resumed copy continues exactly like the original
    resumed_net = copy.deepcopy(net)
    resumed = MuonWithAdamW(resumed_net, adamw_lr=0.5, **KW)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a checkpoint file
    assert all(inner.state is resumed.state for inner in resumed.inner)
    assert resumed.param_groups[1]["lr"] == 0.003
    gen_c = torch.Generator().manual_seed(2)
    _random_grads(net, gen_c)
    resumed_grads = torch.Generator().manual_seed(2)
    _random_grads(resumed_net, resumed_grads)
    opt.step()
    resumed.step()
    for a, b in zip(net.parameters(), resumed_net.parameters()):
        assert torch.equal(a, b)
