"""Core layers: elementwise ops, linear, relu, sigmoid, softmax (norms.py, pooling.py, shape_ops.py hold the rest).

Each op is a pair `name_forward(*arrays, **settings) -> (out, cache)` /
`name_backward(dout, cache) -> grads` plus one line `name = tape.op(name_forward, name_backward)`.
Positional arguments are arrays that may receive a gradient; keywords are settings.

Shapes:  images and feature maps (N, C, H, W); vectors (..., features)
Weights: as torch: linear weight (out, in); norm weight/bias (C,)
Caches:  kept minimal (relu: its output; frozen BN: the per-channel scale; add: two shapes)
Backend: xp = get_array_module(x) everywhere, so the same code runs on NumPy and CuPy
Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import math

from . import init, tape
from .backend import get_array_module
from .module import Module, Parameter

# re-exported: chapters, heads and tests import these from layers (they live in norms, pooling, shape_ops)
from .norms import (  # noqa: F401
    FrozenBatchNorm2d,
    GroupNorm,
    frozen_batch_norm,
    frozen_batch_norm_backward,
    frozen_batch_norm_forward,
    group_norm,
    group_norm_backward,
    group_norm_forward,
)
from .pooling import (  # noqa: F401
    MaxPool2d,
    _nearest_index,
    interpolate,
    interpolate_backward,
    interpolate_forward,
    max_pool2d,
    max_pool2d_backward,
    max_pool2d_forward,
)
from .shape_ops import (  # noqa: F401
    Flatten,
    concatenate,
    concatenate_backward,
    concatenate_forward,
    flatten,
    flatten_backward,
    flatten_forward,
    gather_rows,
    gather_rows_backward,
    gather_rows_forward,
    reshape,
    reshape_backward,
    reshape_forward,
    transpose,
    transpose_backward,
    transpose_forward,
)

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _meta(a):
    """(shape, dtype) of an array input, or None for a Python scalar (which gets no gradient)."""
    return (tuple(a.shape), a.dtype) if _is_array(a) else None


def _unbroadcast(g, shape):
    """Sum `g` down to `shape`: the adjoint of NumPy broadcasting `shape` -> g.shape."""
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))                 # leading axes that were added
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)                 # axes of size 1 that were stretched
    return g.reshape(shape)


def _grad_for(g, meta):
    """Gradient for one broadcast input, in that input's dtype (None for a Python scalar)."""
    if meta is None:
        return None
    shape, dtype = meta
    return _unbroadcast(g, shape).astype(dtype, copy=False)


# ------------------------------------------------------------------------------------------------
# elementwise arithmetic and reductions
# ------------------------------------------------------------------------------------------------


def add_forward(a, b):
    """a + b with NumPy broadcasting; either may be a Python scalar (which gets no gradient)."""
    xp = get_array_module(a, b)
    return xp.asarray(a + b), (_meta(a), _meta(b))


def add_backward(dout, cache):
    meta_a, meta_b = cache
    # forward was: out = a + b (broadcast) -> each input gets dout summed over its broadcast axes
    return _grad_for(dout, meta_a), _grad_for(dout, meta_b)


add = tape.op(add_forward, add_backward)


def mul_forward(a, b):
    """a * b with broadcasting; b (or a) may be a Python scalar. Caches only what backward needs."""
    # d/da needs b, d/db needs a; a Python scalar needs no gradient, so its partner is not kept
    keep_a = a if _is_array(b) else None
    xp = get_array_module(a, b)
    return xp.asarray(a * b), (keep_a, b, _meta(a), _meta(b))


def mul_backward(dout, cache):
    a, b, meta_a, meta_b = cache
    # forward was: out = a * b -> da = dout * b, db = dout * a (then undo the broadcasting)
    ga = _grad_for(dout * b, meta_a) if meta_a is not None else None
    gb = _grad_for(dout * a, meta_b) if meta_b is not None else None
    return ga, gb


mul = tape.op(mul_forward, mul_backward)


def sum_all_forward(x):
    """Sum of every element -> array of shape ()."""
    xp = get_array_module(x)
    return xp.asarray(xp.sum(x)), (tuple(x.shape), x.dtype)


def sum_all_backward(dout, cache):
    shape, dtype = cache
    xp = get_array_module(dout)
    # forward was: out = sum(x) -> every element gets dout (a fresh writable array, not a view)
    return xp.broadcast_to(dout.astype(dtype, copy=False), shape).copy()


sum_all = tape.op(sum_all_forward, sum_all_backward)


def mean_all_forward(x):
    """Mean of every element -> array of shape ()."""
    xp = get_array_module(x)
    if x.size == 0:
        raise ValueError(f"mean_all: empty input of shape {tuple(x.shape)}")
    return xp.asarray(xp.mean(x)), (tuple(x.shape), x.dtype)


def mean_all_backward(dout, cache):
    shape, dtype = cache
    xp = get_array_module(dout)
    # forward was: out = sum(x) / size
    g = dout.astype(dtype, copy=False) / math.prod(shape)
    return xp.broadcast_to(g, shape).copy()


mean_all = tape.op(mean_all_forward, mean_all_backward)


# ------------------------------------------------------------------------------------------------
# linear, relu, sigmoid, softmax
# ------------------------------------------------------------------------------------------------


def linear_forward(x, weight, bias=None):
    """y = x @ weight^T + bias, as torch.nn.functional.linear. x (..., in), weight (out, in), bias (out,)."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input {tuple(x.shape)} does not match weight {tuple(weight.shape)} (need x (..., in), "
            "weight (out, in))"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
    y = x @ weight.T                                        # (..., out)
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(dout, cache):
    x, weight, has_bias = cache
    n_in, n_out = weight.shape[1], weight.shape[0]
    # forward was: y = x @ W^T + b
    dx = dout @ weight                                      # (..., in)
    g2 = dout.reshape(-1, n_out)                            # (M, out)
    dw = g2.T @ x.reshape(-1, n_in)                         # (out, in)
    db = g2.sum(axis=0) if has_bias else None               # (out,)
    return dx, dw, db


linear = tape.op(linear_forward, linear_backward)


def relu_forward(x):
    """max(x, 0). Caches its output (shared with whoever keeps it next), not a copy of x."""
    xp = get_array_module(x)
    out = xp.maximum(x, 0)
    return out, out


def relu_backward(dout, out):
    # forward was: out = max(x, 0) -> gradient passes where out > 0 (x > 0), zero elsewhere
    # (a multiply by the mask, not xp.where, which NumPy runs slowly on unpredictable masks)
    return dout * (out > 0)


relu = tape.op(relu_forward, relu_backward)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)) without overflow: the one sigmoid of the package. Caches its output."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))                                  # in (0, 1], never overflows
    # x >= 0: 1 / (1 + e^-x);  x < 0: e^x / (1 + e^x), which keeps tiny values instead of rounding to 0
    out = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return out, out


def sigmoid_backward(dout, out):
    # forward was: s = sigmoid(x) -> ds/dx = s (1 - s)
    return dout * out * (1 - out)


sigmoid = tape.op(sigmoid_forward, sigmoid_backward)


def softmax_forward(x, dim=-1):
    """exp(x) / sum(exp(x)) along `dim` (max subtracted first). Caches its output."""
    xp = get_array_module(x)
    z = x - xp.max(x, axis=dim, keepdims=True)
    e = xp.exp(z)
    out = e / xp.sum(e, axis=dim, keepdims=True)
    return out, (out, dim)


def softmax_backward(dout, cache):
    out, dim = cache
    xp = get_array_module(dout)
    # forward was: y_i = exp(x_i) / sum_j exp(x_j) -> dx = y * (dout - sum_j dout_j y_j)
    return out * (dout - xp.sum(dout * out, axis=dim, keepdims=True))


softmax = tape.op(softmax_forward, softmax_backward)


# ------------------------------------------------------------------------------------------------
# the Tensor operators: a + b, a * b, a - b, -a, a / 2.0 and t.sum() are the ops above
# ------------------------------------------------------------------------------------------------


def _sub(a, b):
    if isinstance(b, (int, float)):
        return add(a, -b)  # a Python scalar keeps the tensor's dtype
    return add(a, mul(b, -1.0))


def _truediv(a, b):
    if not isinstance(b, (int, float)):
        raise TypeError("Tensor / x is defined for Python scalars only; use layers.mul with a reciprocal")
    return mul(a, 1.0 / b)


def _tensor_operators(T):
    """Attach the operators to the Tensor class (tape.py defines Tensor before any op exists)."""
    T.__add__ = T.__radd__ = add
    T.__mul__ = T.__rmul__ = mul
    T.__sub__ = _sub
    T.__rsub__ = lambda a, b: add(mul(a, -1.0), b)
    T.__truediv__ = _truediv
    T.__neg__ = lambda a: mul(a, -1.0)
    T.sum = sum_all


_tensor_operators(tape.Tensor)


# ------------------------------------------------------------------------------------------------
# modules (torch.nn names, torchvision state-dict keys)
# ------------------------------------------------------------------------------------------------


class Linear(Module):
    """y = x W^T + b. Parameters `weight` (out, in), `bias` (out,); torch's default init."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.torch_default_weight((out_features, in_features), rng=rng))
        self.bias = Parameter(init.torch_default_bias(out_features, in_features, rng=rng)) if bias else None

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    def forward(self, x):
        return relu(x)
