"""The array backend: the one place that chooses NumPy or CuPy.

Every other file asks this module for the array module of its inputs
(`get_array_module(x)`) and writes code that runs unchanged on both. No other
file imports cupy.

Dtype:   float32 by default (`DEFAULT_DTYPE`); float64 is used by the gradient checks.
Random:  every random choice takes an explicit generator (`make_rng(seed)`), never a global one.
Chapter: nbs/00_arrays_and_autograd.ipynb
"""

from __future__ import annotations

import numpy as np

DEFAULT_DTYPE = np.float32

_cupy = None          # the cupy module once imported, False when unavailable
_cupyx = None


def _import_cupy():
    """Import cupy lazily; returns the module or None. Never raises."""
    global _cupy, _cupyx
    if _cupy is None:
        try:
            import cupy
            import cupyx

            _cupy, _cupyx = cupy, cupyx
        except Exception:  # ImportError, or a broken CUDA install
            _cupy = False
    return _cupy or None


def cupy_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(x) -> bool:
    """True for a cupy.ndarray (checked without importing cupy when it is not loaded)."""
    return type(x).__module__.startswith("cupy")


def get_array_module(*arrays):
    """Return `cupy` if any argument is a CuPy array, else `numpy` (None and scalars are ignored)."""
    for a in arrays:
        if is_cupy_array(a):
            return _import_cupy()
    return np


def to_host(x):
    """Any array (NumPy or CuPy) or scalar -> NumPy array. The only device->host copy point."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x, xp):
    """Move a host array to the array module `xp` (numpy: no copy; cupy: upload)."""
    if xp is np:
        return to_host(x)
    return xp.asarray(x)


def asfloat(x, xp=None, dtype=None):
    """Array of floating dtype on `xp` (default: the module of x); ints and bools become float32."""
    xp = xp or get_array_module(x)
    x = xp.asarray(x)
    if dtype is not None:
        return x.astype(dtype, copy=False)
    if x.dtype.kind != "f":
        return x.astype(DEFAULT_DTYPE)
    return x


def scatter_add(target, indices, values):
    """In place `target[indices] += values`, summing repeated indices (unlike `target[i] += v`).

    NumPy: `np.add.at` (or `bincount` for the 1-D integer-index case, which is much faster).
    CuPy:  `cupyx.scatter_add`, which does the same with atomic adds.
    `indices` is anything valid as a NumPy index (an int array, or a tuple of them).
    """
    if is_cupy_array(target):
        _import_cupy()
        _cupyx.scatter_add(target, indices, values)
        return target
    if (
        target.ndim == 1
        and isinstance(indices, np.ndarray)
        and indices.dtype.kind in "iu"
        and target.dtype.kind == "f"
    ):
        values = np.broadcast_to(np.asarray(values, dtype=target.dtype), indices.shape)
        target += np.bincount(indices.ravel(), weights=values.ravel(), minlength=target.size).astype(
            target.dtype, copy=False
        )
        return target
    np.add.at(target, indices, values)
    return target


def make_rng(seed=None, xp=np):
    """A seeded random generator. Always pass it on explicitly; nothing here uses global state.

    NumPy: `np.random.Generator` (PCG64). CuPy: `cupy.random.Generator` on the device.
    """
    if xp is np:
        return np.random.default_rng(seed)
    return xp.random.default_rng(seed)


def synchronize(xp):
    """Wait for the device to finish (for timing); a no-op for NumPy."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
