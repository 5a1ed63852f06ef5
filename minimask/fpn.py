"""Feature pyramid network: C2..C5 from the ResNet trunk -> P2..P6, all with 256 channels.

Shapes:  inputs  C2..C5 (N, C_i, H/2^(i+1), W/2^(i+1)) for i = 1..4, H and W multiples of 32
         outputs P2 (N, 256, H/4, W/4) ... P5 (N, 256, H/32, W/32), P6 (N, 256, H/64, W/64)
Names:   as torchvision: `inner_blocks.{i}.0` (1x1 lateral convs), `layer_blocks.{i}.0` (3x3 output
         convs), `BackboneWithFPN` with `.body` (ResNet) and `.fpn`. Outputs are an OrderedDict with
         torchvision's keys: '0' = P2, '1' = P3, '2' = P4, '3' = P5, 'pool' = P6.
Recipe:  P5' = lateral(C5); P4' = lateral(C4) + up2(P5'); ... ; P_i = output_conv(P_i');
         P6 = max_pool(kernel 1, stride 2) of P5 (every other pixel), used only by the RPN.
Chapter: nbs/03_resnet_fpn.ipynb    Paper: Lin et al. 2017, Feature Pyramid Networks, Sec. 3
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import init
from .conv import Conv2d
from .layers import add, interpolate, max_pool2d
from .module import Module, ModuleList, Sequential
from .resnet import RESNETS, check_image_batch, set_trainable_layers


def _fpn_conv(in_channels, out_channels, kernel_size, rng):
    """Conv with bias, kaiming_uniform(a=1) weight and zero bias, as torchvision's FPN."""
    conv = Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True, rng=rng)
    conv.weight.data = init.kaiming_uniform(conv.weight.shape, a=1.0, rng=rng)
    conv.bias.data = init.zeros(conv.bias.shape)
    return conv


class LastLevelMaxPool(Module):
    """P6 = max_pool2d(P5, kernel_size=1, stride=2): a subsampled P5, as torchvision's extra block."""

    def forward(self, results, names):
        return results + [max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)], names + ["pool"]


class FeaturePyramidNetwork(Module):
    """Top-down pathway with lateral connections.

    forward(OrderedDict name -> (N, C_i, H_i, W_i), finest first) -> OrderedDict name -> (N, 256, H_i, W_i)
    plus the extra block's levels ('pool').
    """

    def __init__(self, in_channels_list, out_channels=256, extra_blocks=None, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.inner_blocks = ModuleList()
        self.layer_blocks = ModuleList()
        for c in in_channels_list:
            if c == 0:
                raise ValueError("in_channels=0 is not supported")
            self.inner_blocks.append(Sequential([_fpn_conv(c, out_channels, 1, rng)]))
            self.layer_blocks.append(Sequential([_fpn_conv(out_channels, out_channels, 3, rng)]))
        if extra_blocks is not None:
            self.extra_blocks = extra_blocks
        self.out_channels = out_channels

    def forward(self, x):
        names = list(x.keys())
        feats = list(x.values())
        if len(feats) != len(self.inner_blocks):
            raise ValueError(f"FPN built for {len(self.inner_blocks)} levels, got {len(feats)}")
        last_inner = self.inner_blocks[-1](feats[-1])                   # (N, 256, h, w), coarsest
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])                # (N, 256, 2h, 2w)
            top_down = interpolate(last_inner, size=tuple(lateral.shape[-2:]))  # nearest x2
            last_inner = add(lateral, top_down)
            results.insert(0, self.layer_blocks[idx](last_inner))      # 3x3 smooths the sum
        if "extra_blocks" in self._modules:
            results, names = self.extra_blocks(results, names)
        return OrderedDict(zip(names, results, strict=True))


class BackboneWithFPN(Module):
    """ResNet body + FPN: (N, 3, H, W) -> OrderedDict '0'..'3' (P2..P5), 'pool' (P6), 256 channels.

    `returned_layers` picks which of layer1..layer4 (C2..C5) feed the FPN, as torchvision.
    """

    def __init__(self, body, in_channels_list, out_channels=256, returned_layers=(1, 2, 3, 4), rng=None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=LastLevelMaxPool(),
                                         rng=rng)
        self.returned_layers = tuple(returned_layers)
        self.out_channels = out_channels

    def forward(self, x):
        check_image_batch(x)
        feats = self.body(x)                                            # '0'..'3' = C2..C5
        picked = OrderedDict((str(k), feats[str(layer - 1)]) for k, layer in enumerate(self.returned_layers))
        return self.fpn(picked)


def resnet_fpn_backbone(backbone_name="resnet50", norm="frozen_bn", trainable_layers=3,
                        returned_layers=(1, 2, 3, 4), out_channels=256, rng=None, base_width=64):
    """Build torchvision's `resnet_fpn_backbone` with fresh weights (load real ones with minimask.weights).

    backbone_name: resnet18 | resnet34 | resnet50 | resnet101; norm: "frozen_bn" | "group_norm".
    trainable_layers: 0..5 stages trained, counted from layer4 (3 = Mask R-CNN: stem, layer1 frozen).
    base_width: the trunk's stem width (64 = torchvision; smaller for fast training from scratch).
    Returns a BackboneWithFPN whose forward gives OrderedDict '0'..'3', 'pool' = P2..P6.
    Chapter: nbs/03_resnet_fpn.ipynb
    """
    if backbone_name not in RESNETS:
        raise ValueError(f"backbone_name must be one of {sorted(RESNETS)}, got {backbone_name!r}")
    returned_layers = tuple(returned_layers)
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers must be a non-empty subset of (1, 2, 3, 4), got {returned_layers}")
    rng = rng if rng is not None else np.random.default_rng()
    body = RESNETS[backbone_name](norm=norm, rng=rng, base_width=base_width)
    set_trainable_layers(body, trainable_layers)
    channels = body.out_channels_list
    in_channels_list = [channels[layer - 1] for layer in returned_layers]
    return BackboneWithFPN(body, in_channels_list, out_channels, returned_layers=returned_layers, rng=rng)
