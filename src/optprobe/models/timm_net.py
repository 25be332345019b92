"""Any timm image model by name, built from scratch, with a stem suited to small images."""

from __future__ import annotations

from collections.abc import Sequence

import timm
from torch import nn


def disable_fused_attention(net: nn.Module) -> int:
    """Switch timm attention blocks to explicit softmax attention; returns how many changed.

    Fused scaled-dot-product kernels have no double backward on CPU (and the memory-efficient
    CUDA kernels have none either), which the curvature probes need.
    """
    changed = 0
    for module in net.modules():
        if getattr(module, "fused_attn", False):
            module.fused_attn = False
            changed += 1
    return changed


def create_timm_model(
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
    small_input_stem: bool = True,
    fused_attn: bool = False,
    **kwargs,
) -> nn.Module:
    """Build ``timm.create_model(name, pretrained=False)`` for inputs of shape (C, H, W).

    ``small_input_stem`` replaces a ResNet's 7x7/2 convolution and max-pool by a 3x3/1
    convolution (the usual CIFAR stem); for ViTs pass ``img_size``/``patch_size`` in kwargs.
    """
    if name not in timm.list_models():
        raise ValueError(
            f"model.name={name!r} is not a timm model; see timm.list_models() (e.g. resnet18, "
            "vit_tiny_patch16_224)"
        )
    in_chans = int(input_shape[0])
    net = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
    if small_input_stem and isinstance(getattr(net, "conv1", None), nn.Conv2d):
        out = net.conv1.out_channels
        net.conv1 = nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)
        if hasattr(net, "maxpool"):
            net.maxpool = nn.Identity()
    if not fused_attn:
        disable_fused_attention(net)
    return net
