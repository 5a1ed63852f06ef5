"""Speed engines: faster ways to compute what the stage files compute, tested equal to them.

The stage files (conv.py, roi_align.py, roi_pool.py, nms.py) hold the reference algorithm a
student reads next to the paper. A public op asks this package ONCE per call which engine to use
(`pick_conv`, `pick_roi_align`, `pick_roi_pool`, `pick_nms`; None means the reference), records
the answer in its cache, and its backward follows that record.

Engines:  conv        Winograd F(2x2, 3x3), the shifted-view and chunked im2col paths, 1x1 matmuls,
                      and the cost model that picks one (fast/conv.py, conv_paths.py, winograd.py)
          roi_align   the tap engine: separable per-axis taps, one gather + matmul per chunk of bins
          roi_pool    chunked gather, first-max argmax without a Python loop
          nms         the sweep: sorted windows, a sparse suppression graph, vectorised resolve
          host        glibc malloc tuning and a thread pool for memory-bound passes
Switch:   `disable()` / `enable()`, or MINIMASK_REFERENCE=1 in the environment, turn every CPU engine
          off (the suite passes both ways). The CUDA kernels are the GPU implementation, not
          engines: CuPy arrays keep running them either way.
Chapter:  nbs/14_appendix_engines.ipynb (the appendix: every engine against its reference)
"""

from __future__ import annotations

import contextlib
import os

from . import conv

REFERENCE_ENV = "MINIMASK_REFERENCE"
_state = {"enabled": os.environ.get(REFERENCE_ENV, "") in ("", "0")}


def enabled() -> bool:
    """True when the CPU engines may be used (the default)."""
    return _state["enabled"]


def disable():
    """Turn every CPU engine off: the ops run their reference code."""
    _state["enabled"] = False


def enable():
    _state["enabled"] = True


@contextlib.contextmanager
def reference():
    """`with fast.reference(): ...` runs the block on the reference code, then restores the switch."""
    old = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = old


def pick_roi_align():
    """True: RoIAlign on NumPy arrays runs the tap engine (fast/roi_align.py); False: the reference."""
    return enabled()


def pick_roi_pool():
    """True: RoIPool on NumPy arrays runs the chunked-gather engine (fast/roi_pool.py)."""
    return enabled()


def pick_nms():
    """True: NMS on NumPy arrays runs the sweep (fast/nms.py); False: the greedy loop."""
    return enabled()


def pick_conv(x_shape, w_shape, stride, padding, dilation, out_hw=None, on_device=False):
    """The conv engine's plan for this call (a `conv.ConvPlan`), or None for the reference."""
    return conv.plan(x_shape, w_shape, stride, padding, dilation, out_hw, on_device) if enabled() else None
