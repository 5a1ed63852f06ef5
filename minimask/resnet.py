"""ResNet trunk (the "body" of the backbone): stem, then four stages giving C2, C3, C4, C5.

Shapes:  x (N, 3, H, W) float, H and W multiples of 32 (the model's input transform pads to that)
         C2 (N, 64e, H/4, W/4)   C3 (N, 128e, H/8, W/8)   C4 (N, 256e, H/16, W/16)
         C5 (N, 512e, H/32, W/32), with e = 1 (BasicBlock: ResNet-18/34) or 4 (Bottleneck: 50/101)
Names:   modules and attributes exactly as torchvision's `resnet50`, so state-dict keys match:
         conv1, bn1, layer1..layer4; per block conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0/.1.
         No `fc` (a detector has no classifier). `forward` returns an OrderedDict '0'..'3' = C2..C5,
         like torchvision's `IntermediateLayerGetter` body of `resnet_fpn_backbone`.
Norms:   "frozen_bn" (default: batch-norm statistics and affine fixed, buffers only) or
         "group_norm" (32 groups, trainable weight and bias).
Stride:  on the 3x3 conv of a Bottleneck ("ResNet v1.5", as torchvision), not on its first 1x1.
Chapter: nbs/03_resnet_fpn.ipynb    Paper: He et al. 2016, Deep Residual Learning, Table 1
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import init
from .conv import Conv2d
from .layers import FrozenBatchNorm2d, GroupNorm, add, max_pool2d, relu
from .module import Module, Sequential
from .tape import as_tensor

GROUP_NORM_GROUPS = 32  # as in "Rethinking ImageNet Pre-training" / Detectron GN baselines


def check_image_batch(x, size_divisible=32):
    """Raise ValueError unless x is a float (N, 3, H, W) batch with H, W multiples of `size_divisible`."""
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (N, 3, H, W), got {shape}")
    if np.dtype(x.dtype).kind != "f":
        raise ValueError(f"expected a floating-point image batch, got dtype {x.dtype}")
    h, w = shape[2], shape[3]
    if h % size_divisible or w % size_divisible:
        raise ValueError(
            f"image batch {shape}: H and W must be multiples of {size_divisible}, so that every level C2..C5 "
            f"is exactly half the one before (as torchvision's transform guarantees); the model's input "
            f"transform pads images to that"
        )


def group_norm_groups(num_features):
    """32 groups (He & Wu's default, and torchvision's) whenever the channels divide into them; the
    narrower layers of a slim trunk (base_width 16: 16 channels) use groups of 4 channels instead."""
    if num_features % GROUP_NORM_GROUPS == 0:
        return GROUP_NORM_GROUPS
    return max(1, num_features // 4)


def make_norm(norm, num_features):
    """The normalisation layer after each conv: FrozenBatchNorm2d or GroupNorm(32, C) (fewer groups when narrow)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(num_features)
    if norm == "group_norm":
        return GroupNorm(group_norm_groups(num_features), num_features)
    raise ValueError(f"norm must be 'frozen_bn' or 'group_norm', got {norm!r}")


def _conv(in_channels, out_channels, kernel_size, stride=1, rng=None):
    """Bias-free conv with 'same' padding for odd kernels, initialised as torchvision's ResNet does."""
    conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                  bias=False, rng=rng)
    conv.weight.data = init.kaiming_normal(conv.weight.shape, mode="fan_out", rng=rng)
    return conv


class BasicBlock(Module):
    """Two 3x3 convs and a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    x (N, inplanes, H, W) -> (N, planes, H/stride, W/stride). ResNet-18/34.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm="frozen_bn", rng=None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride=stride, rng=rng)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv(planes, planes, 3, rng=rng)
        self.bn2 = make_norm(norm, planes)
        if downsample is not None:
            self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if "downsample" in self._modules:
            identity = self.downsample(x)
        return relu(add(out, identity))


class Bottleneck(Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, plus a shortcut; ReLU after the sum.

    x (N, inplanes, H, W) -> (N, 4*planes, H/stride, W/stride). ResNet-50/101.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm="frozen_bn", rng=None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1, rng=rng)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv(planes, planes, 3, stride=stride, rng=rng)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1, rng=rng)
        self.bn3 = make_norm(norm, planes * self.expansion)
        if downsample is not None:
            self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = relu(self.bn1(self.conv1(x)))       # (N, planes, H, W)
        out = relu(self.bn2(self.conv2(out)))     # (N, planes, H/s, W/s)
        out = self.bn3(self.conv3(out))           # (N, 4 planes, H/s, W/s)
        if "downsample" in self._modules:
            identity = self.downsample(x)         # 1x1 conv, stride s, then norm
        return relu(add(out, identity))


class ResNet(Module):
    """The trunk: conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4.

    forward(x (N, 3, H, W)) -> OrderedDict '0': C2, '1': C3, '2': C4, '3': C5 (shapes in the module
    docstring). `block` is BasicBlock or Bottleneck; `layers` the number of blocks per stage.
    `base_width` (64 in every torchvision ResNet) sets the stem's channels; stage k has
    base_width * 2^k planes. Narrower trunks (16, 32) train from scratch on small data in minutes.
    """

    def __init__(self, block, layers, norm="frozen_bn", rng=None, base_width=64):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.norm = norm
        self.base_width = w = base_width
        self.inplanes = w
        self.conv1 = _conv(3, w, 7, stride=2, rng=rng)
        self.bn1 = make_norm(norm, w)
        self.layer1 = self._make_layer(block, w, layers[0], 1, rng)
        self.layer2 = self._make_layer(block, 2 * w, layers[1], 2, rng)
        self.layer3 = self._make_layer(block, 4 * w, layers[2], 2, rng)
        self.layer4 = self._make_layer(block, 8 * w, layers[3], 2, rng)

    def _make_layer(self, block, planes, blocks, stride, rng):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential([
                _conv(self.inplanes, planes * block.expansion, 1, stride=stride, rng=rng),
                make_norm(self.norm, planes * block.expansion),
            ])
        stage = [block(self.inplanes, planes, stride, downsample, norm=self.norm, rng=rng)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            stage.append(block(self.inplanes, planes, norm=self.norm, rng=rng))
        return Sequential(stage)

    @property
    def out_channels_list(self):
        """Channels of C2..C5: [64, 128, 256, 512] (for base_width 64) times the block expansion."""
        e, w = self.layer1[0].expansion, self.base_width
        return [w * e, 2 * w * e, 4 * w * e, 8 * w * e]

    def forward(self, x):
        x = as_tensor(x)
        check_image_batch(x)
        x = relu(self.bn1(self.conv1(x)))                         # (N, 64, H/2, W/2)
        x = max_pool2d(x, kernel_size=3, stride=2, padding=1)     # (N, 64, H/4, W/4)
        out = OrderedDict()
        for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            x = getattr(self, name)(x)
            out[str(i)] = x                                       # C(i+2): stride 2^(i+2)
        return out


# torchvision's order of "how far down the network is still trained" (resnet_fpn_backbone).
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def set_trainable_layers(body, trainable_layers):
    """Freeze all but the last `trainable_layers` stages (0..5) of a ResNet trunk, as torchvision.

    5 trains everything (also bn1); 3 (Mask R-CNN's default) freezes the stem and layer1; 0 freezes
    all. Frozen parameters get `requires_grad=False`: the tape records no gradient for them and the
    optimizer skips them. (FrozenBatchNorm2d has no parameters at all, only buffers.)
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    train = list(_TRAINABLE_ORDER[:trainable_layers])
    if trainable_layers == 5:
        train.append("bn1")
    for name, p in body.named_parameters():
        p.requires_grad = any(name.startswith(prefix) for prefix in train)
    return body


def _resnet(block, layers, norm, rng, base_width=64):
    return ResNet(block, layers, norm=norm, rng=rng, base_width=base_width)


def resnet18(norm="frozen_bn", rng=None, base_width=64):
    """ResNet-18 trunk (BasicBlock, [2, 2, 2, 2]); C2..C5 channels 64, 128, 256, 512."""
    return _resnet(BasicBlock, [2, 2, 2, 2], norm, rng, base_width)


def resnet34(norm="frozen_bn", rng=None, base_width=64):
    """ResNet-34 trunk (BasicBlock, [3, 4, 6, 3]); C2..C5 channels 64, 128, 256, 512."""
    return _resnet(BasicBlock, [3, 4, 6, 3], norm, rng, base_width)


def resnet50(norm="frozen_bn", rng=None, base_width=64):
    """ResNet-50 trunk (Bottleneck, [3, 4, 6, 3]); C2..C5 channels 256, 512, 1024, 2048."""
    return _resnet(Bottleneck, [3, 4, 6, 3], norm, rng, base_width)


def resnet101(norm="frozen_bn", rng=None, base_width=64):
    """ResNet-101 trunk (Bottleneck, [3, 4, 23, 3]); C2..C5 channels 256, 512, 1024, 2048."""
    return _resnet(Bottleneck, [3, 4, 23, 3], norm, rng, base_width)


RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
