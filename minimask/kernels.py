"""The CUDA kernels: read the .cu files, launch them with CuPy, or run the same source on the CPU.

Files:   kernels/roi_align.cu, roi_pool.cu, nms.cu (shipped as the package data minimask._kernels);
         each names its NumPy twin in its first lines
GPU:     `cupy.RawKernel(source, name, options)` compiled by NVRTC, called as kernel(grid, block, args)
CPU:     `CpuKernel`: g++ compiles the same source against kernels/cuda_cpu.h (threads as CUDA
         threads, a barrier as __syncthreads) into a small shared library, called through ctypes
         with the same (grid, block, args); tests and chapter 08 use it to run kernels without a GPU
Launch:  `launch_config(n)` (one thread per output element) and `nms_launch_config(n)` give the
         grid and block; the wrappers below use them for both, so the CPU run is the GPU's launch
Dtypes:  each kernel is compiled per dtype with -Dscalar_t=float or -Dscalar_t=double
Chapter: nbs/08_cuda_kernels.ipynb
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .backend import get_array_module, to_host

KERNEL_FILES = ("roi_align.cu", "roi_pool.cu", "nms.cu")
THREADS_PER_BLOCK = 256          # RoI kernels: one thread per output element
MAX_BLOCKS = 4096                # beyond this the grid-stride loops take over
NMS_BOXES_PER_BLOCK = 64         # bits of one unsigned long long (BOXES_PER_BLOCK in nms.cu)
MAX_GRID_Y = 65535               # CUDA's limit on gridDim.y

_SCALAR = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# ------------------------------------------------------------------------------------------------
# sources and launch configuration
# ------------------------------------------------------------------------------------------------


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


def nvrtc_options(filename, dtype):
    """Compiler options for one kernel file and dtype (the CuPy wrapper and the compile test use them).

    nms.cu turns off fused multiply-add so that its IoU is rounded exactly as NumPy rounds it.
    """
    opts = (f"-Dscalar_t={_scalar_name(dtype)}",)
    if filename == "nms.cu":
        opts += ("--fmad=false",)
    return opts


def launch_config(n, threads=THREADS_PER_BLOCK):
    """(grid, block) for n output elements, one thread each; past MAX_BLOCKS the threads loop."""
    blocks = min(max((n + threads - 1) // threads, 1), MAX_BLOCKS)
    return (blocks,), (threads,)


def nms_launch_config(n_boxes):
    """(grid, block) for the NMS mask: one block per (column block, row block) of 64 boxes."""
    col_blocks = max((n_boxes + NMS_BOXES_PER_BLOCK - 1) // NMS_BOXES_PER_BLOCK, 1)
    return (min(col_blocks, MAX_BLOCKS), min(col_blocks, MAX_BLOCKS, MAX_GRID_Y)), (NMS_BOXES_PER_BLOCK,)


def _scalar_name(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _SCALAR:
        raise ValueError(f"kernels run in float32 or float64, got {dtype}")
    return _SCALAR[dtype]


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


# Build the CPU kernels with -fsanitize=thread (for a process started with libtsan preloaded).
EMULATION_SANITIZE = False


@functools.lru_cache(maxsize=None)
def _cpu_kernel(filename, name, dtype, sanitize):
    return CpuKernel(filename, name, dtype, sanitize)


@functools.lru_cache(maxsize=None)
def _gpu_kernel(filename, name, dtype, xp):
    return xp.RawKernel(kernel_source(filename), name, options=nvrtc_options(filename, dtype))


def get_kernel(filename, name, dtype, xp):
    """The kernel `name` of `filename` for `dtype`: a cupy.RawKernel when xp is cupy, else a CpuKernel.

    On the stand-in device (minimask.testing.fake_cuda) `xp.RawKernel` compiles the same source
    for the CPU emulation, so the device path is the one that runs.
    """
    dtype = np.dtype(dtype)
    _scalar_name(dtype)
    if xp is np:
        return _cpu_kernel(filename, name, dtype, EMULATION_SANITIZE)
    return _gpu_kernel(filename, name, dtype, xp)


# ------------------------------------------------------------------------------------------------
# wrappers: CuPy arrays launch on the GPU, NumPy arrays run the CPU emulation of the same launch
# ------------------------------------------------------------------------------------------------


def _prepare(input, rois):
    xp = get_array_module(input)
    input = xp.ascontiguousarray(input)
    return xp, input, xp.ascontiguousarray(rois.astype(input.dtype, copy=False))


def roi_align_forward_kernel(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """kernels/roi_align.cu forward: input (N, C, H, W), rois (K, 5) -> (K, C, ph, pw)."""
    xp, input, rois = _prepare(input, rois)
    N, C, H, W = input.shape
    ph, pw = output_size
    out = xp.zeros((rois.shape[0], C, ph, pw), dtype=input.dtype)
    if out.size:
        dt = input.dtype.type
        grid, block = launch_config(out.size)
        get_kernel("roi_align.cu", "roi_align_forward", input.dtype, xp)(grid, block, (
            input, rois, out, np.int64(out.size), np.int32(C), np.int32(H), np.int32(W), np.int32(ph),
            np.int32(pw), dt(spatial_scale), np.int32(sampling_ratio), np.int32(bool(aligned))))
    return out


def roi_align_backward_kernel(grad_output, rois, input_shape, output_size, spatial_scale=1.0,
                              sampling_ratio=-1, aligned=False):
    """kernels/roi_align.cu backward: grad_output (K, C, ph, pw) -> grad_input (N, C, H, W)."""
    xp, grad_output, rois = _prepare(grad_output, rois)
    N, C, H, W = input_shape
    ph, pw = output_size
    grad = xp.zeros((N, C, H, W), dtype=grad_output.dtype)
    if grad_output.size:
        dt = grad_output.dtype.type
        grid, block = launch_config(grad_output.size)
        get_kernel("roi_align.cu", "roi_align_backward", grad_output.dtype, xp)(grid, block, (
            grad_output, rois, grad, np.int64(grad_output.size), np.int32(C), np.int32(H), np.int32(W),
            np.int32(ph), np.int32(pw), dt(spatial_scale), np.int32(sampling_ratio), np.int32(bool(aligned))))
    return grad


def roi_pool_forward_kernel(input, rois, output_size, spatial_scale=1.0):
    """kernels/roi_pool.cu forward: -> output (K, C, ph, pw) and argmax (K, C, ph, pw) int32."""
    xp, input, rois = _prepare(input, rois)
    N, C, H, W = input.shape
    ph, pw = output_size
    out = xp.zeros((rois.shape[0], C, ph, pw), dtype=input.dtype)
    argmax = xp.full(out.shape, -1, dtype=np.int32)
    if out.size:
        grid, block = launch_config(out.size)
        get_kernel("roi_pool.cu", "roi_pool_forward", input.dtype, xp)(grid, block, (
            input, rois, out, argmax, np.int64(out.size), np.int32(C), np.int32(H), np.int32(W),
            np.int32(ph), np.int32(pw), input.dtype.type(spatial_scale)))
    return out, argmax


def roi_pool_backward_kernel(grad_output, argmax, rois, input_shape):
    """kernels/roi_pool.cu backward: each bin's gradient to its argmax pixel -> (N, C, H, W)."""
    xp, grad_output, rois = _prepare(grad_output, rois)
    argmax = xp.ascontiguousarray(argmax.astype(np.int32, copy=False))
    N, C, H, W = input_shape
    K, _, ph, pw = grad_output.shape
    grad = xp.zeros((N, C, H, W), dtype=grad_output.dtype)
    if grad_output.size:
        grid, block = launch_config(grad_output.size)
        get_kernel("roi_pool.cu", "roi_pool_backward", grad_output.dtype, xp)(grid, block, (
            grad_output, argmax, rois, grad, np.int64(grad_output.size), np.int32(C), np.int32(H),
            np.int32(W), np.int32(ph), np.int32(pw)))
    return grad


def nms_mask(sorted_boxes, iou_threshold):
    """kernels/nms.cu: boxes (n, 4) sorted by score -> mask (n, ceil(n / 64)) uint64.

    Bit j of word b of row i is set when box i suppresses box 64 b + j (IoU > threshold, below i).
    """
    xp = get_array_module(sorted_boxes)
    boxes = xp.ascontiguousarray(sorted_boxes)
    n = boxes.shape[0]
    col_blocks = (n + NMS_BOXES_PER_BLOCK - 1) // NMS_BOXES_PER_BLOCK
    mask = xp.zeros((n, col_blocks), dtype=np.uint64)
    if n:
        grid, block = nms_launch_config(n)
        get_kernel("nms.cu", "nms_mask", boxes.dtype, xp)(grid, block, (
            boxes, mask, np.int32(n), boxes.dtype.type(iou_threshold)))
    return mask


def reduce_nms_mask(mask):
    """The host side of NMS: walk the boxes by rank, keep one unless a kept box has marked it.

    mask (n, words) uint64 on the host -> kept ranks (ascending). Sequential at heart; Python ints
    serve as n-bit sets, so each kept box costs one OR of its row.
    """
    mask = np.ascontiguousarray(mask, dtype="<u8")
    removed = 0
    keep = []
    for i in range(mask.shape[0]):
        if not (removed >> i) & 1:
            keep.append(i)
            removed |= int.from_bytes(mask[i].tobytes(), "little")
    return np.asarray(keep, dtype=np.int64)


def nms_cuda(boxes, scores, iou_threshold):
    """NMS with kernels/nms.cu (torchvision.ops.nms): (N, 4) boxes, (N,) scores -> kept indices.

    Same rule and order as minimask.nms.nms: sort by decreasing score (ties: lower index first),
    bitmask on the device (or the CPU emulation for NumPy arrays), reduction on the host.
    """
    xp = get_array_module(boxes, scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or tuple(scores.shape) != (boxes.shape[0],):
        raise ValueError(f"nms_cuda: boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return xp.zeros((0,), dtype=np.int64)
    if boxes.dtype not in _SCALAR:
        boxes = boxes.astype(np.float32)
    order = xp.argsort(-scores, kind="stable")
    mask = nms_mask(boxes[order], iou_threshold)
    keep = reduce_nms_mask(to_host(mask))          # host on purpose: a sequential walk
    return order[xp.asarray(keep)]
