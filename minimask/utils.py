"""Small argument and shape checks shared by the stage files."""

from __future__ import annotations

import math
import numbers

import numpy as np


def pair(v, name, minimum=None):
    """An int or a pair of ints -> (int, int), each >= minimum (if given); else a ValueError naming `name`."""
    t = tuple(v) if isinstance(v, (tuple, list)) or hasattr(v, "__len__") else (v, v)
    if len(t) != 2 or not all(isinstance(i, numbers.Integral) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    t = (int(t[0]), int(t[1]))
    if minimum is not None and min(t) < minimum:
        raise ValueError(f"{name} must be >= {minimum}{' (positive)' if minimum == 1 else ''}, got {v!r}")
    return t


def check_ndim(name, x, ndims):
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {want} input, got shape {tuple(x.shape)}")


def check_positive_finite(name, what, v):
    if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: {what} must be a positive finite number, got {v!r}")


def per_channel(v, ndim):
    """(C,) -> (1, C, 1, ..., 1) so it broadcasts along axis 1 of an ndim-D array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))
