"""Shape ops on the tape: concatenate, reshape, flatten, transpose, gather_rows; their backward moves
gradients back to where the forward took the values from.

Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from . import tape
from .backend import get_array_module, scatter_add
from .module import Module

# ------------------------------------------------------------------------------------------------
# shape ops
# ------------------------------------------------------------------------------------------------


def concatenate_forward(*arrays, axis=0):
    """Join arrays along `axis`; each input gets the matching slice of the gradient."""
    if not arrays:
        raise ValueError("concatenate: needs at least one array")
    xp = get_array_module(*arrays)
    first = arrays[0]
    ax = axis % first.ndim if first.ndim else 0
    for a in arrays[1:]:
        if a.ndim != first.ndim or tuple(np.delete(a.shape, ax)) != tuple(np.delete(first.shape, ax)):
            raise ValueError(
                f"concatenate: shapes {[tuple(b.shape) for b in arrays]} differ outside axis {axis}"
            )
    sizes = [a.shape[ax] for a in arrays]
    return xp.concatenate(arrays, axis=ax), (sizes, ax)


def concatenate_backward(dout, cache):
    sizes, ax = cache
    grads, start = [], 0
    for n in sizes:
        # forward was: out = [a_0 | a_1 | ...] along ax -> a_k gets its slice back
        index = (slice(None),) * ax + (slice(start, start + n),)
        grads.append(dout[index])
        start += n
    return tuple(grads)


concatenate = tape.op(concatenate_forward, concatenate_backward)


def reshape_forward(x, shape):
    """x.reshape(shape); `shape` is a setting (a tuple, -1 allowed)."""
    try:
        return x.reshape(shape), tuple(x.shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} to {shape}") from None


def reshape_backward(dout, x_shape):
    return dout.reshape(x_shape)


reshape = tape.op(reshape_forward, reshape_backward)


def flatten_forward(x, start_dim=1):
    """Merge the axes from `start_dim` on, as torch.flatten(x, start_dim): (N, C, H, W) -> (N, C*H*W)."""
    if x.ndim == 0:
        return x.reshape(1), tuple(x.shape)
    sd = start_dim % x.ndim
    merged = math.prod(x.shape[sd:])            # not -1: zero RoIs (0, C, 7, 7) must give (0, C*49)
    return x.reshape(tuple(x.shape[:sd]) + (merged,)), tuple(x.shape)


def flatten_backward(dout, x_shape):
    return dout.reshape(x_shape)


flatten = tape.op(flatten_forward, flatten_backward)


def transpose_forward(x, axes):
    """Permute the axes, as np.transpose(x, axes) (torch: x.permute(*axes))."""
    axes = tuple(int(a) for a in axes)
    if sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} axes of {tuple(x.shape)}")
    xp = get_array_module(x)
    return xp.transpose(x, axes), axes


def transpose_backward(dout, axes):
    xp = get_array_module(dout)
    # forward was: out = transpose(x, axes) -> apply the inverse permutation
    return xp.transpose(dout, tuple(np.argsort([a % dout.ndim for a in axes])))


transpose = tape.op(transpose_forward, transpose_backward)


def gather_rows_forward(x, index):
    """x[index] along axis 0 for an integer array `index` (a setting; repeats allowed)."""
    xp = get_array_module(x)
    index = xp.asarray(index)
    if index.dtype.kind not in "iu":
        raise ValueError(f"gather_rows: index must be an integer array, got {index.dtype}")
    if x.ndim == 0:
        raise ValueError("gather_rows: x must have at least one axis")
    index = xp.where(index < 0, index + x.shape[0], index)  # so the backward scatter sees only n >= 0
    return x[index], (index, tuple(x.shape), x.dtype)


def gather_rows_backward(dout, cache):
    index, x_shape, dtype = cache
    xp = get_array_module(dout)
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    # forward was: out = x[index] -> scatter back; repeated rows accumulate
    scatter_add(dx, index, dout)
    return dx.astype(dtype, copy=False)


gather_rows = tape.op(gather_rows_forward, gather_rows_backward)


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return flatten(x, start_dim=self.start_dim)
