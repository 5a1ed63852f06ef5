"""Parameter initialisers, as torch.nn.init does them, drawing from an explicit generator.

Every function returns a new float32 NumPy array of the requested shape; a module wraps it in a
`Parameter`. `rng` is a `np.random.Generator`; None means a fresh, unseeded one (model builders
pass one seeded generator down so a whole model is reproducible).
Fan-in/fan-out of a conv weight (O, I, kh, kw) are I*kh*kw and O*kh*kw, as in torch.
Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from .backend import DEFAULT_DTYPE


def _rng(rng):
    return rng if rng is not None else np.random.default_rng()


def fans(shape):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel) or (out, in)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def zeros(shape):
    return np.zeros(shape, dtype=DEFAULT_DTYPE)


def ones(shape):
    return np.ones(shape, dtype=DEFAULT_DTYPE)


def normal(shape, std=0.01, rng=None):
    return (_rng(rng).standard_normal(shape) * std).astype(DEFAULT_DTYPE)


def uniform(shape, bound, rng=None):
    return _rng(rng).uniform(-bound, bound, size=shape).astype(DEFAULT_DTYPE)


def kaiming_normal(shape, mode="fan_out", rng=None):
    """He et al. 2015 for ReLU nets: std = sqrt(2 / fan). torchvision's ResNet uses mode='fan_out'."""
    fan_in, fan_out = fans(shape)
    fan = fan_out if mode == "fan_out" else fan_in
    return normal(shape, std=math.sqrt(2.0 / fan), rng=rng)


def kaiming_uniform(shape, a=0.0, mode="fan_in", rng=None):
    """U(-b, b) with b = sqrt(6 / ((1 + a^2) fan)); a=1 gives torchvision's FPN/RPN conv init."""
    fan_in, fan_out = fans(shape)
    fan = fan_out if mode == "fan_out" else fan_in
    bound = math.sqrt(6.0 / ((1 + a * a) * fan))
    return uniform(shape, bound, rng=rng)


def torch_default_weight(shape, rng=None):
    """torch's default Conv/Linear weight init: kaiming_uniform with a = sqrt(5), i.e. b = 1/sqrt(fan_in)."""
    return kaiming_uniform(shape, a=math.sqrt(5.0), rng=rng)


def torch_default_bias(out_features, fan_in, rng=None):
    """torch's default Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform((out_features,), bound, rng=rng)
