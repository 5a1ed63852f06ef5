"""Small argument helpers shared by the stage files (no arrays here)."""

from __future__ import annotations

import numbers


def pair(v, name, minimum=None):
    """An int or a pair of ints -> (int, int), each >= minimum (if given); else a ValueError naming `name`."""
    t = tuple(v) if isinstance(v, (tuple, list)) or hasattr(v, "__len__") else (v, v)
    if len(t) != 2 or not all(isinstance(i, numbers.Integral) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    t = (int(t[0]), int(t[1]))
    if minimum is not None and min(t) < minimum:
        raise ValueError(f"{name} must be >= {minimum}{' (positive)' if minimum == 1 else ''}, got {v!r}")
    return t
