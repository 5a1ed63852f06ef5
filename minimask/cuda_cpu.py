"""The CUDA sources, and how they run on the CPU: g++ against kernels/cuda_cpu.h, launched through ctypes.

Files:   kernels/roi_align.cu, roi_pool.cu, nms.cu (shipped as the package data minimask._kernels)
CPU:     `CpuKernel`: g++ compiles the same source against kernels/cuda_cpu.h (threads as CUDA
         threads, a barrier as __syncthreads) into a small shared library, called through ctypes
         with the same (grid, block, args). The stand-in device (testing/fake_cuda.py) and the tests
         use it to run kernels without a GPU; kernels.py launches the same sources with CuPy.
Chapter: nbs/08_cuda_kernels.ipynb
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

KERNEL_FILES = ("roi_align.cu", "roi_pool.cu", "nms.cu")
_SCALAR = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def kernel_dir():
    """The folder holding the .cu files and cuda_cpu.h (inside the installed package)."""
    return importlib.resources.files("minimask._kernels")


def kernel_source(filename):
    """The text of one kernel file, e.g. kernel_source("roi_align.cu")."""
    return (kernel_dir() / filename).read_text()


_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def kernel_signatures(source):
    """{kernel name: [(type, name), ...]} for every `extern "C" __global__` function in `source`."""
    out = {}
    for name, params in _SIGNATURE.findall(source):
        args = []
        for p in params.split(","):
            m = re.match(r"^(.*?)(\w+)$", " ".join(p.split()))
            args.append((m.group(1).strip(), m.group(2)))
        out[name] = args
    return out


def _scalar_name(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _SCALAR:
        raise ValueError(f"kernels run in float32 or float64, got {dtype}")
    return _SCALAR[dtype]


# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# the CPU emulation
# ------------------------------------------------------------------------------------------------

_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "unsigned int": ctypes.c_uint,
           "float": ctypes.c_float, "double": ctypes.c_double}
_POINTEE = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64,
            "float": np.float32, "double": np.float64}


def _base_type(t, dtype):
    """'const scalar_t*' -> ('float', True) for float32 kernels."""
    pointer = t.endswith("*")
    base = " ".join(t.rstrip("*").replace("const", " ").split())
    return (_scalar_name(dtype) if base == "scalar_t" else base), pointer


def launcher_source(filename, source, dtype):
    """C++ that includes the kernel file and adds `launch_<name>(grid, block, args...)` per kernel."""
    lines = [f'#include "{filename}"', ""]
    for name, params in kernel_signatures(source).items():
        decl = ", ".join(f"{t} {p}" for t, p in params)
        call = ", ".join(p for _, p in params)
        lines += [
            f'extern "C" void launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,',
            f"                              unsigned bz, {decl}) {{",
            f"  cuda_cpu::launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, [=] {{ {name}({call}); }});",
            "}",
            "",
        ]
    return "\n".join(lines)


def emulation_cache_dir():
    """Where compiled CPU kernels are kept: $MINIMASK_KERNEL_CACHE or <tmp>/minimask-kernels-<uid>."""
    env = os.environ.get("MINIMASK_KERNEL_CACHE")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(env) if env else Path(tempfile.gettempdir()) / f"minimask-kernels-{uid}"


def compile_emulation(filename, dtype, sanitize=False, source=None, cxx=None):
    """Compile kernels/<filename> for the CPU with g++; returns the path of the shared library.

    The library is cached under `emulation_cache_dir()`, keyed by a hash of the sources and flags,
    so a session compiles each (file, dtype) once. sanitize=True adds -fsanitize=thread (the
    process must then be started with libtsan preloaded). `source` replaces the file's text (to
    try a modified kernel, e.g. in chapter 08).
    """
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++") or "g++"
    source = kernel_source(filename) if source is None else source
    header = kernel_source("cuda_cpu.h")
    launcher = launcher_source(filename, source, dtype)
    flags = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
             f"-Dscalar_t={_scalar_name(dtype)}"]
    if sanitize:
        flags += ["-fsanitize=thread", "-g"]
    key = hashlib.sha256("\0".join([source, header, launcher, cxx, *flags]).encode()).hexdigest()[:16]
    stem = filename.rsplit(".", 1)[0]
    out = emulation_cache_dir() / f"{stem}-{_scalar_name(dtype)}{'-tsan' if sanitize else ''}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = Path(tmp)
        (tmp / filename).write_text(source)
        (tmp / "cuda_cpu.h").write_text(header)
        (tmp / "launch.cpp").write_text(launcher)
        lib = tmp / "lib.so"
        cmd = [cxx, *flags, "-include", str(tmp / "cuda_cpu.h"), "-I", str(tmp), str(tmp / "launch.cpp"),
               "-o", str(lib)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"g++ could not compile {filename} for the CPU emulation:\n{res.stderr}")
        os.replace(lib, out)   # atomic: concurrent sessions never load a half-written file
    return out


class CpuKernel:
    """The CPU stand-in for `cupy.RawKernel`: same file, kernel name and call `kernel(grid, block, args)`.

    Array arguments must be C-contiguous NumPy arrays of the kernel's pointer type (checked, since
    a wrong type is silent memory corruption on the GPU too); scalars are converted by the
    parameter types parsed from the source.
    """

    def __init__(self, filename, name, dtype, sanitize=False, source=None):
        self.name, self.dtype = name, np.dtype(dtype)
        source = kernel_source(filename) if source is None else source
        params = kernel_signatures(source).get(name)
        if params is None:
            raise ValueError(f"no extern \"C\" __global__ kernel named {name!r} in {filename}")
        self.params = [(p, *_base_type(t, dtype)) for t, p in params]
        self._lib = ctypes.CDLL(str(compile_emulation(filename, dtype, sanitize, source)))
        self._fn = getattr(self._lib, f"launch_{name}")
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_uint] * 6 + [
            ctypes.c_void_p if ptr else _CTYPES[base] for _, base, ptr in self.params
        ]

    def __call__(self, grid, block, args):
        if len(args) != len(self.params):
            raise ValueError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        values = []
        for (pname, base, ptr), a in zip(self.params, args, strict=True):
            if ptr:
                want = np.dtype(_POINTEE[base])
                if not isinstance(a, np.ndarray) or a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: argument {pname} must be a C-contiguous {want} NumPy array")
                values.append(a.ctypes.data)
            else:
                values.append(a.item() if hasattr(a, "item") else a)
        self._fn(*grid, *block, *values)
