"""A strict stand-in for CuPy, backed by NumPy: runs the whole GPU path of minimask on a CPU.

What it checks. A CuPy array lives on the device: CuPy never converts it to a NumPy array
implicitly, and every time a value comes back to the host the device must have finished its work
(a synchronisation). This module's `ndarray` behaves the same where it matters:
  - refused, with CuPy's TypeError: `np.asarray(x)` / `np.array(x)`, a NumPy array as an operand of
    a device operation (`x + np_arr`, `np_arr + x`, `xp.concatenate([x, np_arr])`, `x[np_idx]`,
    `x[...] = np_arr`), a device array as an index into a NumPy array, `float(x)` on a non-scalar;
  - counted as device -> host transfers or synchronisations (`SYNCS`, by kind and by source line):
    `.get()` / `asnumpy`, `float` / `int` / `bool` / `.item()` / `.tolist()` / `__index__` on a
    device array, `nonzero` / `flatnonzero` / `argwhere` / `unique` / one-argument `where`, and
    boolean-mask indexing (a result whose shape depends on the data, which CuPy must read back);
  - host -> device uploads (`asarray` / `array` of host data) are counted too (`UPLOADS`);
  - `RawKernel(source, name, options)` compiles the same .cu source for the CPU emulation
    (`minimask.cuda_cpu.CpuKernel`, kernels/cuda_cpu.h) and launches it with the same grid and
    block; launches are counted by kernel name (`LAUNCHES`);
  - only names that the installed CuPy also has are served (when CuPy is importable), so a NumPy-only
    function fails here as it would on the GPU.
Reductions return 0-d device arrays, as CuPy's do (NumPy returns host scalars).

Use: `MINIMASK_FAKE_CUDA=1` makes `--device cuda` (and `backend.device_module("cuda")`) use this
module; `backend.get_array_module` sees its arrays as device arrays. Tests call `reset_counters()`
and read `SYNCS` / `LAUNCHES`. Arithmetic is NumPy's, so results equal the NumPy run's.
Chapter: nbs/08_cuda_kernels.ipynb
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import types

import numpy as np

from ..cuda_cpu import CpuKernel

_THIS_FILE = os.path.abspath(__file__)
# frames skipped when naming where a sync happened: this file and backend.py's forwarders (to_host)
_SKIP = {_THIS_FILE, os.path.join(os.path.dirname(os.path.dirname(_THIS_FILE)), "backend.py")}
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
             "array explicitly.")

SYNCS: collections.Counter = collections.Counter()       # (kind, "file:function") -> count
UPLOADS: collections.Counter = collections.Counter()     # "file:function" -> host -> device copies
LAUNCHES: collections.Counter = collections.Counter()    # kernel name -> launches
TRACE = False                                            # print each sync as it happens (debugging)


def reset_counters():
    SYNCS.clear()
    UPLOADS.clear()
    LAUNCHES.clear()


def sync_count(kind=None):
    """Total syncs counted since the last reset (of one kind, e.g. "get", "nonzero", "bool")."""
    return sum(n for (k, _), n in SYNCS.items() if kind is None or k == kind)


def _caller():
    """'minimask/rpn.py:filter_proposals' of the first frame outside this file, backend.py and NumPy
    (function names, not line numbers, so that counts keyed by place survive unrelated edits)."""
    f = sys._getframe(2)
    while f is not None and (os.path.abspath(f.f_code.co_filename) in _SKIP
                             or "/numpy/" in f.f_code.co_filename):
        f = f.f_back
    if f is None:
        return "?"
    path = f.f_code.co_filename
    parts = path.replace(os.sep, "/").split("/")
    return f"{'/'.join(parts[-2:])}:{f.f_code.co_name}"


def _sync(kind):
    where = _caller()
    SYNCS[(kind, where)] += 1
    if TRACE:
        print(f"[fake_cuda] sync {kind} at {where}")


# ------------------------------------------------------------------------------------------------
# wrapping and unwrapping
# ------------------------------------------------------------------------------------------------

def _refuse(obj):
    raise TypeError(f"Unsupported type {type(obj)}")


def _unwrap(obj):
    """Device arrays -> their NumPy storage; a host NumPy array is refused as CuPy refuses it."""
    if isinstance(obj, ndarray):
        return obj._a
    if isinstance(obj, np.ndarray):
        _refuse(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _wrap(obj):
    """NumPy results -> device arrays; NumPy scalars -> 0-d device arrays (CuPy reductions)."""
    if isinstance(obj, np.ndarray):
        return ndarray(obj)
    if isinstance(obj, np.generic):
        return ndarray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _index(key):
    """An index for a device array: device arrays unwrap; host arrays are refused; a boolean
    mask makes the result's shape depend on the data (a sync)."""
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for k in parts:
        if isinstance(k, ndarray):
            if k._a.dtype == np.bool_ and k._a.ndim > 0:
                _sync("boolean-index")
            out.append(k._a)
        elif isinstance(k, np.ndarray):
            _refuse(k)
        elif isinstance(k, list):
            out.append(np.asarray(_unwrap(k)))
        else:
            out.append(k)
    return tuple(out) if isinstance(key, tuple) else out[0]


# ------------------------------------------------------------------------------------------------
# the array
# ------------------------------------------------------------------------------------------------

# ndarray methods that return arrays or 0-d arrays and exist on cupy.ndarray
_METHODS = frozenset("""
all any argmax argmin argsort astype clip conj copy cumsum dot fill flatten max mean min nonzero prod ravel
repeat reshape round sort squeeze std sum swapaxes take trace transpose var view
""".split())


def _binary(name):
    def op(self, other):
        if isinstance(other, np.ndarray):
            _refuse(other)
        return _wrap(getattr(self._a, name)(_unwrap(other)))
    op.__name__ = name
    return op


def _unary(name):
    def op(self):
        return _wrap(getattr(self._a, name)())
    op.__name__ = name
    return op


class ndarray:  # noqa: N801 (cupy's name)
    """A device array: NumPy storage `_a`, no implicit way back to the host."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    _fake_cuda = True           # backend.is_cupy_array recognises it by this

    def __init__(self, a):
        self._a = a

    # --- the explicit way to the host ------------------------------------------------------------
    def get(self, stream=None, order="C", out=None):
        _sync("get")
        return np.array(self._a, order=order)

    def item(self):
        _sync("item")
        return self._a.item()

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    def __index__(self):
        _sync("index")
        if self._a.ndim != 0 or self._a.dtype.kind not in "iu":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._a)

    def __bool__(self):
        _sync("bool")
        return bool(self._a)

    def __complex__(self):
        _sync("complex")
        return complex(self._a)

    # --- refused: implicit conversion -------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        fn = getattr(ufunc, method)
        res = fn(*_unwrap(inputs), **_unwrap(kwargs))
        return None if method == "at" else _wrap(res)

    def __array_function__(self, func, types_, args, kwargs):
        return _module_function(func.__name__)(*args, **kwargs)

    # --- attributes -------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    device = property(lambda self: "fake-cuda:0")

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'ndarray' (fake cuda) has no attribute {name!r}")
        method = getattr(self._a, name)

        @functools.wraps(method)
        def call(*args, **kwargs):
            if name == "nonzero":
                _sync("nonzero")
            if name in ("argsort", "sort") and kwargs.get("kind") not in (None, "stable"):
                raise ValueError("CuPy sorts are always stable: kind must be None or 'stable'")
            return _wrap(method(*_unwrap(args), **_unwrap(kwargs)))
        return call

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(np.asarray(self._a[i])) for i in range(len(self._a)))

    def __repr__(self):
        return f"fake_cuda.ndarray({self._a!r})"

    __hash__ = None

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            _refuse(value)
        self._a[_index(key) if not _is_bool_mask(key) else key._a] = _unwrap(value)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):
        raise TypeError("fake_cuda arrays are not picklable (copy to the host first)")

    for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
               "lshift", "rshift", "lt", "le", "gt", "ge", "eq", "ne"):
        for _p in ("__{}__", "__r{}__", "__i{}__"):
            _name = _p.format(_n)
            if hasattr(np.ndarray, _name):
                locals()[_name] = _binary(_name)
    for _name in ("__neg__", "__pos__", "__abs__", "__invert__"):
        locals()[_name] = _unary(_name)
    del _n, _p, _name


def _is_bool_mask(key):
    """Boolean-mask assignment (`x[mask] = v`) stays on the device in CuPy: no sync."""
    return isinstance(key, ndarray) and key._a.dtype == np.bool_


# ------------------------------------------------------------------------------------------------
# the module
# ------------------------------------------------------------------------------------------------



# The installed cupy (None when absent): the stand-in serves only its names. backend.py, the one
# module that imports cupy, installs its lazy `_import_cupy` here when it imports this module.
real_cupy = lambda: None  # noqa: E731


_UPLOAD = {"asarray", "array", "asanyarray"}
_DATA_DEPENDENT = {"nonzero", "flatnonzero", "argwhere", "unique", "compress", "extract"}


def _served(name):
    real = real_cupy()
    if real is not None and not hasattr(real, name):
        raise AttributeError(f"cupy has no attribute {name!r} (the stand-in serves only cupy's names)")


@functools.lru_cache(maxsize=None)
def _module_function(name):
    _served(name)
    fn = getattr(np, name)
    if isinstance(fn, np.ufunc):
        return _Ufunc(fn)

    def call(*args, **kwargs):
        if name in _UPLOAD and args and not isinstance(args[0], ndarray):
            host = args[0]
            if _contains_device(host):           # a list of device arrays: a device op
                args = (_unwrap(host),) + args[1:]
            else:
                UPLOADS[_caller()] += 1
                return ndarray(np.array(host, *args[1:], **{k: v for k, v in kwargs.items() if k != "order"},
                                        copy=True))
        if name in _DATA_DEPENDENT or (name == "where" and len(args) == 1):
            _sync(name)
        if name in ("argsort", "sort") and kwargs.get("kind") not in (None, "stable"):
            raise ValueError("CuPy sorts are always stable: kind must be None or 'stable'")
        res = fn(*_unwrap(args), **_unwrap(kwargs))
        if name in _UPLOAD and isinstance(res, np.ndarray) and isinstance(args[0], ndarray) \
                and res is not args[0]._a:
            return ndarray(res)
        if name in _UPLOAD and isinstance(args[0], ndarray) and res is args[0]._a:
            return args[0]
        return _wrap(res)
    call.__name__ = name
    return call


def _contains_device(obj):
    if isinstance(obj, ndarray):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_contains_device(o) for o in obj)
    return False


class _Ufunc:
    """A NumPy ufunc on device arrays: call, plus the methods CuPy's ufuncs have."""

    def __init__(self, ufunc):
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _wrap(self._u(*_unwrap(args), **_unwrap(kwargs)))

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            _refuse(a)
        if b is None:
            self._u.at(a._a, _index(indices))
        else:
            self._u.at(a._a, _index(indices), _unwrap(b))

    def reduce(self, *args, **kwargs):
        return _wrap(self._u.reduce(*_unwrap(args), **_unwrap(kwargs)))

    def accumulate(self, *args, **kwargs):
        return _wrap(self._u.accumulate(*_unwrap(args), **_unwrap(kwargs)))

    def outer(self, *args, **kwargs):
        return _wrap(self._u.outer(*_unwrap(args), **_unwrap(kwargs)))


def asnumpy(a, stream=None, order="C", out=None):
    """Device -> host copy (counted); host arrays pass through as in CuPy."""
    if isinstance(a, ndarray):
        return a.get(order=order)
    return np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


# --- RawKernel: the same .cu source through the CPU emulation ---------------------------------------

class RawKernel:
    """cupy.RawKernel(source, name, options): compiled for the CPU by minimask.cuda_cpu.CpuKernel."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, **kwargs):
        self.code, self.name, self.options = code, name, tuple(options)
        scalar = next((o.split("=", 1)[1] for o in self.options if o.startswith("-Dscalar_t=")), "float")
        self._dtype = np.float64 if scalar == "double" else np.float32
        self._kernel = None

    def __call__(self, grid, block, args, shared_mem=0, enable_cooperative_groups=False):
        if self._kernel is None:
            self._kernel = CpuKernel(f"{self.name}.cu", self.name, self._dtype, source=self.code)
        host_args = []
        for a in args:
            if isinstance(a, np.ndarray):
                _refuse(a)
            host_args.append(a._a if isinstance(a, ndarray) else a)
        LAUNCHES[self.name] += 1
        self._kernel(grid, block, tuple(host_args))


# --- cuda: streams and the memory pool -------------------------------------------------------------

class _Stream:
    def synchronize(self):
        pass


class _MemoryPool:
    """CuPy's pool interface; the stand-in holds no device memory, so every figure is 0."""

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass

    def malloc(self, size):
        return None


_POOL = _MemoryPool()
_allocator = [None]

cuda = types.SimpleNamespace(
    get_current_stream=lambda: _Stream(),
    Device=lambda i=0: types.SimpleNamespace(synchronize=lambda: None, id=i),
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
    set_allocator=lambda allocator=None: _allocator.__setitem__(0, allocator),
    get_allocator=lambda: _allocator[0],
)


def get_default_memory_pool():
    return _POOL


# --- random: a device generator (NumPy's PCG64 underneath) -------------------------------------------

class _Generator:
    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        method = getattr(self._g, name)
        return lambda *a, **k: _wrap(method(*_unwrap(a), **_unwrap(k)))


random = types.SimpleNamespace(default_rng=_Generator)

# cupyx's one function that minimask uses
cupyx = types.SimpleNamespace(scatter_add=lambda a, indices, b: _Ufunc(np.add).at(a, indices, b))


def __getattr__(name):  # module attributes: NumPy's dtypes and constants, NumPy's functions on device arrays
    if name.startswith("__"):
        raise AttributeError(name)
    missing = object()
    value = getattr(np, name, missing)
    if value is missing:
        raise AttributeError(f"module 'fake_cuda' has no attribute {name!r}")
    if callable(value) and not isinstance(value, type):
        return _module_function(name)
    _served(name)
    return value
