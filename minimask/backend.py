"""The array backend: the one place that chooses NumPy or CuPy.

Every other file asks this module for the array module of its inputs
(`get_array_module(x)`) and writes code that runs unchanged on both. No other
file imports cupy.

Dtype:   float32 by default (`DEFAULT_DTYPE`); float64 is used by the gradient checks.
Random:  every random choice takes an explicit generator (`make_rng(seed)`), never a global one.
Chapter: nbs/00_arrays_and_autograd.ipynb
"""

from __future__ import annotations

import os

import numpy as np

from .testing import fake_cuda

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


fake_cuda.real_cupy = _import_cupy  # the stand-in device serves only the names the installed CuPy has


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
    """True for a device array: a cupy.ndarray (checked without importing cupy when it is not loaded)
    or an array of the stand-in device `minimask.testing.fake_cuda`."""
    t = type(x)
    return t.__module__.startswith("cupy") or getattr(t, "_fake_cuda", False)


def get_array_module(*arrays):
    """Return `cupy` if any argument is a CuPy array, else `numpy` (None and scalars are ignored).

    Arrays of the stand-in device return the stand-in module (`minimask.testing.fake_cuda`).
    """
    for a in arrays:
        if is_cupy_array(a):
            return _fake_cuda() if getattr(type(a), "_fake_cuda", False) else _import_cupy()
    return np


FAKE_CUDA_ENV = "MINIMASK_FAKE_CUDA"


def _fake_cuda():
    return fake_cuda


def device_module(device="cpu"):
    """The array module of a device name: "cpu" -> numpy; "cuda" -> cupy.

    With MINIMASK_FAKE_CUDA=1, "cuda" is the strict stand-in device (`minimask.testing.fake_cuda`:
    NumPy underneath, CuPy's refusals of implicit host conversion, syncs counted), so the whole
    GPU path runs on a machine without one. Raises a RuntimeError that says what is missing.
    Chapter: nbs/08_cuda_kernels.ipynb
    """
    if device in ("cpu", "numpy"):
        return np
    if device not in ("cuda", "gpu") and not str(device).startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}: cpu | cuda")
    if os.environ.get(FAKE_CUDA_ENV, "") not in ("", "0"):
        return _fake_cuda()
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError("--device cuda needs CuPy for your CUDA version: pip install 'minimask[gpu-cuda12]' "
                           "or 'minimask[gpu-cuda13]' (README, GPU); set MINIMASK_FAKE_CUDA=1 to run on the "
                           "stand-in device instead")
    if not cupy_available():
        raise RuntimeError("--device cuda: CuPy imports but sees no CUDA device (driver missing or no GPU); "
                           "set MINIMASK_FAKE_CUDA=1 to run on the stand-in device instead")
    return cp


def device_name(xp) -> str:
    """"cpu" for numpy, "cuda" for cupy or the stand-in device."""
    return "cpu" if xp is np else "cuda"


def to_host(x):
    """Any array (NumPy or CuPy) or scalar -> NumPy array. The only device->host copy point."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x, xp):
    """Move a host array to the array module `xp` (numpy: no copy; cupy: upload).

    Lists, tuples and dicts are moved element by element (a batch: `to_device((images, targets), xp)`
    uploads every image and every target array, once). Non-array leaves (ints, strings) stay.
    """
    if isinstance(x, dict):
        return type(x)((k, to_device(v, xp)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, xp) for v in x)
    if not (isinstance(x, np.ndarray) or is_cupy_array(x)):
        return x
    if xp is np:
        return to_host(x)
    return xp.asarray(x)


def module_of(model):
    """The array module a model's parameters live on (numpy, cupy or the stand-in device)."""
    params = model.parameters()
    return get_array_module(params[0].data) if params else np


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

    NumPy: `np.add.at` (or `bincount` for many 1-D integer indices into a float target: much faster).
    CuPy:  `cupyx.scatter_add`, which does the same with atomic adds.
    `indices` is anything valid as a NumPy index (an int array, or a tuple of them).
    """
    if is_cupy_array(target):
        if getattr(type(target), "_fake_cuda", False):
            _fake_cuda().cupyx.scatter_add(target, indices, values)   # the stand-in's cupyx
        else:
            _import_cupy()
            _cupyx.scatter_add(target, indices, values)
        return target
    if (
        target.ndim == 1
        and isinstance(indices, np.ndarray)
        and indices.dtype.kind in "iu"
        and target.dtype.kind == "f"
        and 8 * indices.size >= target.size  # bincount pays for the whole target; add.at per index
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


def nccl_module():
    """`cupy.cuda.nccl`, NCCL through CuPy: distributed.py sums device gradients over GPUs with it."""
    if _import_cupy() is None:
        raise RuntimeError("NCCL needs CuPy and a CUDA device (pip install 'minimask[gpu-cuda12]' or 'gpu-cuda13')")
    from cupy.cuda import nccl

    return nccl


def synchronize(xp):
    """Wait for the device to finish (for timing); a no-op for NumPy."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


# --- device memory ------------------------------------------------------------------------------------
_peak = {"used": 0}


def track_device_memory(xp):
    """Route CuPy's allocations through its default memory pool and record the peak in use.

    CuPy already allocates from its pool (freed blocks are kept and reused, never returned to the
    driver: the device's counterpart of `fast.host.keep_freed_host_memory`); the pool reports what is in use
    now, not the peak, so this wraps the pool's malloc to remember the highest `used_bytes`.
    A no-op for NumPy. Read it with `device_memory(xp)`.
    """
    if xp is np:
        return
    pool = xp.get_default_memory_pool()

    def malloc(size):
        mem = pool.malloc(size)
        _peak["used"] = max(_peak["used"], pool.used_bytes())
        return mem

    xp.cuda.set_allocator(malloc)
    reset_peak_device_memory(xp)


def reset_peak_device_memory(xp):
    if xp is not np:
        _peak["used"] = xp.get_default_memory_pool().used_bytes()


def describe_device_memory(xp) -> str:
    """One line for the CLIs: peak device memory in use and what CuPy's pool holds."""
    if getattr(xp, "__name__", "").endswith("fake_cuda"):
        return "device memory: none (the stand-in device keeps its arrays in host memory)"
    mem = device_memory(xp)
    return (f"device memory: peak {mem['peak'] / 2**20:.0f} MiB in use, "
            f"{mem['pool'] / 2**20:.0f} MiB held by CuPy's pool")


def device_memory(xp):
    """{"used", "peak", "pool"} bytes of CuPy's pool: in use now, peak in use since
    `track_device_memory` / `reset_peak_device_memory`, held by the pool. Zeros for NumPy and the stand-in."""
    if xp is np:
        return {"used": 0, "peak": 0, "pool": 0}
    pool = xp.get_default_memory_pool()
    used = pool.used_bytes()
    return {"used": used, "peak": max(_peak["used"], used), "pool": pool.total_bytes()}
