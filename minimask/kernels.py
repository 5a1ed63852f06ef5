"""The CUDA kernels: read the .cu files, launch them with CuPy, or run the same source on the CPU.

Files:   kernels/roi_align.cu, roi_pool.cu, nms.cu (shipped as the package data minimask._kernels);
         each names its NumPy twin in its first lines
GPU:     `cupy.RawKernel(source, name, options)` compiled by NVRTC, called as kernel(grid, block, args)
CPU:     `CpuKernel` (cuda_cpu.py): g++ compiles the same source against kernels/cuda_cpu.h into a
         small shared library called with the same (grid, block, args); tests and chapter 08 use it
Launch:  `launch_config(n)` (one thread per output element) and `nms_launch_config(n)` give the
         grid and block; the wrappers below use them for both, so the CPU run is the GPU's launch
Dtypes:  each kernel is compiled per dtype with -Dscalar_t=float or -Dscalar_t=double
Chapter: nbs/08_cuda_kernels.ipynb
"""

from __future__ import annotations

import functools

import numpy as np

from .backend import get_array_module, to_host
from .cuda_cpu import (  # noqa: F401  re-exported: chapter 08 and the tests read the sources through kernels
    _SCALAR,
    KERNEL_FILES,
    CpuKernel,
    _scalar_name,
    compile_emulation,
    kernel_dir,
    kernel_signatures,
    kernel_source,
)

THREADS_PER_BLOCK = 256          # RoI kernels: one thread per output element
MAX_BLOCKS = 4096                # beyond this the grid-stride loops take over
NMS_BOXES_PER_BLOCK = 64         # bits of one unsigned long long (BOXES_PER_BLOCK in nms.cu)
MAX_GRID_Y = 65535               # CUDA's limit on gridDim.y

# ------------------------------------------------------------------------------------------------
# sources and launch configuration
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
