"""Shared kernel cases: one list, checked three ways (NVRTC compile, CPU emulation, real GPU).

A `KernelCase` builds its inputs on the host from a fixed seed, runs a kernel wrapper of
minimask.kernels on arrays of the given module (NumPy -> the CPU emulation of the same launch,
CuPy -> the GPU), and compares with the NumPy reference of the package:
    forward 1e-5, backward 1e-4 in float32 (different summation order; backward adds with
    atomics in any order); 1e-12 in float64; RoIPool values and argmax and NMS indices exactly.

Run as a script (`python tests/kernel_harness.py`) it checks every case on the CPU emulation and
exits non-zero on a mismatch; test_kernels.py runs it that way under ThreadSanitizer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from minimask import kernels  # noqa: E402
from minimask.backend import to_host  # noqa: E402
from minimask.roi_align import roi_align_backward, roi_align_forward  # noqa: E402
from minimask.roi_pool import roi_pool_backward, roi_pool_forward  # noqa: E402

SHAPE = (2, 4, 13, 11)          # N, C, H, W
SIZE = (3, 4)                   # ph, pw
SCALE = 0.5


def make_rois(rng, K, dtype):
    """K boxes in image pixels (SCALE maps them to the map): some partly or wholly outside, two of
    zero size, one spanning the whole image."""
    N, _, H, W = SHAPE
    sides = rng.uniform(0.5, 1.3, (K, 2)) * np.array([W, H]) / SCALE
    corner = rng.uniform(-0.3, 1.0, (K, 2)) * np.array([W, H]) / SCALE
    rois = np.concatenate([rng.integers(0, N, (K, 1)), corner, corner + sides], axis=1)
    if K >= 4:
        rois[0, 3:] = rois[0, 1:3]                              # zero size
        rois[1, 1:] = [3.0, 4.0, 3.0, 4.0]                      # zero size on a pixel
        rois[2, 1:] = [-60, -60, -40, -30]                      # wholly outside
        rois[3, 1:] = [0, 0, W / SCALE, H / SCALE]              # the whole map
    return rois.astype(dtype)


def tolerance(dtype, backward):
    if np.dtype(dtype) == np.float64:
        return 1e-12
    return 1e-4 if backward else 1e-5


@dataclass(frozen=True)
class KernelCase:
    """One kernel launch to check: `op` names the kernel and what is compared."""

    op: str                      # roi_align_forward, roi_align_backward, roi_pool_forward, ...
    dtype: type
    sampling_ratio: int = 2
    aligned: bool = True
    K: int = 10

    @property
    def id(self):
        extra = f"-sr{self.sampling_ratio}-{'aligned' if self.aligned else 'legacy'}" if "align" in self.op else ""
        return f"{self.op}{extra}-K{self.K}-{np.dtype(self.dtype).name}"

    def check(self, xp=np):
        """Run the kernel on `xp` arrays and assert it equals the NumPy reference."""
        rng = np.random.default_rng(0)
        if self.op == "nms":
            return self._check_nms(rng, xp)
        x = rng.standard_normal(SHAPE).astype(self.dtype)
        rois = make_rois(rng, self.K, self.dtype)
        dev = lambda a: xp.asarray(a)            # noqa: E731
        if self.op.startswith("roi_align"):
            settings = (SCALE, self.sampling_ratio, self.aligned)
            ref, cache = roi_align_forward(x, rois, SIZE, *settings)
            if self.op == "roi_align_forward":
                got = kernels.roi_align_forward_kernel(dev(x), dev(rois), SIZE, *settings)
                return _close(got, ref, tolerance(self.dtype, False))
            g = rng.standard_normal(ref.shape).astype(self.dtype)
            got = kernels.roi_align_backward_kernel(dev(g), dev(rois), SHAPE, SIZE, *settings)
            return _close(got, roi_align_backward(g, cache)[0], tolerance(self.dtype, True))
        ref, cache = roi_pool_forward(x, rois, SIZE, SCALE)
        out, argmax = kernels.roi_pool_forward_kernel(dev(x), dev(rois), SIZE, SCALE)
        if self.op == "roi_pool_forward":
            np.testing.assert_array_equal(to_host(out), ref)            # a max: exact
            np.testing.assert_array_equal(to_host(argmax), cache[0])
            return
        g = rng.standard_normal(ref.shape).astype(self.dtype)
        got = kernels.roi_pool_backward_kernel(dev(g), argmax, dev(rois), SHAPE)
        return _close(got, roi_pool_backward(g, cache)[0], tolerance(self.dtype, True))

    def _check_nms(self, rng, xp):
        from minimask.nms import nms

        n = self.K
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], axis=1)
        boxes[: n // 10] = boxes[n // 10: 2 * (n // 10)]             # exact duplicates
        boxes[-3:, 2:] = boxes[-3:, :2]                             # zero-area boxes
        boxes = boxes.astype(self.dtype)
        scores = rng.permutation(n).astype(self.dtype)              # distinct scores
        for t in (0.3, 0.5, 0.7):
            got = to_host(kernels.nms_cuda(xp.asarray(boxes), xp.asarray(scores), t))
            np.testing.assert_array_equal(got, nms(boxes, scores, t))


def _close(got, ref, tol):
    np.testing.assert_allclose(to_host(got), ref, rtol=tol, atol=tol)


CASES = [
    KernelCase(op, dtype, sr, aligned)
    for dtype in (np.float32, np.float64)
    for op in ("roi_align_forward", "roi_align_backward")
    for sr, aligned in ((2, True), (0, False))
] + [
    KernelCase(op, dtype) for dtype in (np.float32, np.float64) for op in ("roi_pool_forward", "roi_pool_backward")
] + [
    KernelCase("roi_align_forward", np.float32, K=0),                # empty box set: no launch
    KernelCase("nms", np.float32, K=300),                            # 5 x 5 blocks of 64 boxes
    KernelCase("nms", np.float64, K=70),
]


def main():
    """Check every case on the CPU emulation (float32 and float64); print one line per case."""
    failed = 0
    for case in CASES:
        try:
            case.check(np)
            print("ok  ", case.id)
        except AssertionError as e:
            failed += 1
            print("FAIL", case.id, e)
    return 1 if failed else 0


if __name__ == "__main__":
    if "--tsan" in sys.argv:
        kernels.EMULATION_SANITIZE = True
    sys.exit(main())
