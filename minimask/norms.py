"""Normalisation layers: frozen batch norm (for pretrained weights) and group norm (training from scratch).

Shapes:  x (N, C, H, W); weight, bias, running statistics (C,), as torch
Chapter: nbs/02_layers_and_losses.ipynb    Paper: Group Normalization (Wu & He 2018)
"""

from __future__ import annotations

import numpy as np

from . import init, tape
from .backend import get_array_module
from .module import Module, Parameter
from .utils import check_positive_finite, per_channel

# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, eps=1e-5):
    """torchvision's FrozenBatchNorm2d: y = x * scale + shift, per channel (axis 1).

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    x (N, C, ...) ; the four statistics (C,) are buffers: only x gets a gradient.
    """
    if x.ndim < 2:
        raise ValueError(f"frozen_batch_norm: expected (N, C, ...) input, got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if tuple(v.shape) != (C,):
            raise ValueError(f"frozen_batch_norm: {name} {tuple(v.shape)} does not match input {tuple(x.shape)}")
    check_positive_finite("frozen_batch_norm", "eps", eps)
    xp = get_array_module(x)
    scale = weight * (1 / xp.sqrt(running_var + eps))       # (C,)
    shift = bias - running_mean * scale                     # (C,)
    scale = per_channel(scale, x.ndim)                     # (1, C, 1, 1)
    out = x * scale
    out += per_channel(shift, x.ndim)
    return out, scale


def frozen_batch_norm_backward(dout, scale):
    # forward was: y = x * scale + shift -> dx = dout * scale (statistics are frozen buffers)
    return (dout * scale).astype(dout.dtype, copy=False)


frozen_batch_norm = tape.op(frozen_batch_norm_forward, frozen_batch_norm_backward)


def group_norm_forward(x, weight=None, bias=None, num_groups=32, eps=1e-5):
    """Group normalisation (Wu & He 2018), torch semantics (biased variance over each group).

    x (N, C, ...) -> same shape; weight, bias (C,) or None (no affine).
    NOTE the argument order differs from torch.nn.functional.group_norm(x, num_groups, weight, bias):
    here the differentiable arrays are positional and `num_groups`, `eps` are keyword settings.
    """
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected (N, C, ...) input, got shape {tuple(x.shape)}")
    N, C = x.shape[0], x.shape[1]
    G = num_groups
    if not isinstance(G, (int, np.integer)) or G < 1 or C % G != 0:
        raise ValueError(f"group_norm: num_groups={G!r} must be a positive divisor of the {C} channels "
                         f"of input {tuple(x.shape)}")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"group_norm: {name} {tuple(v.shape)} does not match input {tuple(x.shape)}")
    check_positive_finite("group_norm", "eps", eps)
    xp = get_array_module(x)
    xg = x.reshape(N, G, -1)                                # (N, G, C/G * S)
    mean = xg.mean(axis=2, keepdims=True)                   # (N, G, 1)
    xc = xg - mean
    var = (xc * xc).mean(axis=2, keepdims=True)             # biased, as torch
    rstd = 1 / xp.sqrt(var + eps)                           # (N, G, 1)
    xc *= rstd                                              # x_hat, (N, G, C/G * S)
    out = xc.reshape(x.shape)
    if weight is not None:
        out *= per_channel(weight, x.ndim)
    if bias is not None:
        out += per_channel(bias, x.ndim)
    # like torch: keep x (held by its producer anyway), mean and rstd; x_hat is recomputed
    return out, (x, mean, rstd, weight, bias is not None, G)


def group_norm_backward(dout, cache):
    x, mean, rstd, weight, has_bias, G = cache
    N = x.shape[0]
    reduce_axes = (0,) + tuple(range(2, x.ndim))            # all but the channel axis
    xhat = ((x.reshape(N, G, -1) - mean) * rstd)            # (N, G, M)
    # forward was: y = x_hat * w + b
    db = dout.sum(axis=reduce_axes) if has_bias else None   # (C,)
    dw = (dout * xhat.reshape(x.shape)).sum(axis=reduce_axes) if weight is not None else None
    dxhat = dout * per_channel(weight, x.ndim) if weight is not None else dout
    dxhat = dxhat.reshape(N, G, -1)                         # (N, G, M)
    # x_hat = (x - mean) * rstd over each group of M elements:
    #   dx = rstd * (dxhat - mean(dxhat) - x_hat * mean(dxhat * x_hat))
    dx = dxhat - dxhat.mean(axis=2, keepdims=True)
    dx -= xhat * (dxhat * xhat).mean(axis=2, keepdims=True)
    dx *= rstd
    return dx.reshape(x.shape).astype(x.dtype, copy=False), dw, db


group_norm = tape.op(group_norm_forward, group_norm_backward)


class FrozenBatchNorm2d(Module):
    """Batch norm with fixed statistics and affine, as torchvision.ops.misc.FrozenBatchNorm2d.

    Buffers (not trained): `weight` (1), `bias` (0), `running_mean` (0), `running_var` (1), each (C,).
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", init.ones((num_features,)))
        self.register_buffer("bias", init.zeros((num_features,)))
        self.register_buffer("running_mean", init.zeros((num_features,)))
        self.register_buffer("running_var", init.ones((num_features,)))

    def forward(self, x):
        return frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class GroupNorm(Module):
    """Group norm, torch.nn.GroupNorm(num_groups, num_channels): Parameters `weight` (1), `bias` (0)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"GroupNorm: num_groups={num_groups} does not divide num_channels={num_channels}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = Parameter(init.ones((num_channels,))) if affine else None
        self.bias = Parameter(init.zeros((num_channels,))) if affine else None

    def forward(self, x):
        return group_norm(x, self.weight, self.bias, num_groups=self.num_groups, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"
