"""RoIWarp (Dai et al. 2016, the paper's Table 2c): RoIPool's rounded box, then RoIAlign's bilinear sampling.

Shapes:  input (N, C, H, W); boxes (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or
         a list of (K_i, 4); output (K, C, ph, pw)
Coords:  the box is first snapped to whole map cells exactly as RoIPool snaps it (roi_pool.py:
         corners x * spatial_scale rounded half away from zero, both end cells included), i.e. to
         cells a..b, which cover [a, b + 1) in cell-edge coordinates; that region is then sampled
         bilinearly with RoIAlign's half-pixel convention (cell i's centre at i + 0.5), so the
         samples cover exactly the cells RoIPool max-pools over. Only the rounding differs from
         RoIAlign; only the bilinear sampling (and the aggregation) from RoIPool.
Agg.:    "avg" (roi_align on the snapped box, the CUDA kernel on CuPy) or "max" (roi_align_max.py)
Chapter: nbs/07_roipool_vs_roialign.ipynb    Paper: Mask R-CNN (He et al. 2017), Table 2c
"""

from __future__ import annotations

from . import tape
from .backend import get_array_module
from .roi_align import check_rois, roi_align_backward, roi_align_forward
from .roi_align_max import roi_align_max_backward, roi_align_max_forward
from .roi_pool import round_half_away

AGGREGATIONS = ("avg", "max")


def quantize_rois(rois, spatial_scale):
    """(K, 5) rois -> the same rows with each box snapped to the map cells RoIPool would use.

    x1' = round(x1 s) / s, x2' = (round(x2 s) + 1) / s (and the same in y), s = spatial_scale:
    the box [x1', x2') covers cells round(x1 s) .. round(x2 s) of the map, whole.
    """
    xp = get_array_module(rois)
    s = rois.dtype.type(spatial_scale)
    cells = round_half_away(rois[:, 1:] * s)                               # (K, 4) cell indices
    end = cells[:, 2:] + rois.dtype.type(1)                                 # both end cells included
    end = xp.maximum(end, cells[:, :2] + rois.dtype.type(1))                # at least one cell (as RoIPool)
    return xp.concatenate([rois[:, :1], cells[:, :2] / s, end / s], axis=1)


def roi_warp_forward(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aggregation="avg"):
    """RoIWarp. input (N, C, H, W), boxes (K, 5) -> (K, C, ph, pw); cache for the backward."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"roi_warp: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    rois = quantize_rois(check_rois("roi_warp", input, boxes), spatial_scale)
    inner = roi_align_forward if aggregation == "avg" else roi_align_max_forward
    out, cache = inner(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True)
    return out, (aggregation, cache)


def roi_warp_backward(dout, cache):
    """forward was: out = RoIAlign(input, quantize_rois(boxes)), mean or max per bin: its backward."""
    aggregation, inner = cache
    return (roi_align_backward if aggregation == "avg" else roi_align_max_backward)(dout, inner)


_roi_warp = tape.op(roi_warp_forward, roi_warp_backward, name="roi_warp")


def roi_warp(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aggregation="avg"):
    """RoIWarp with roi_align's signature (plus `aggregation`); differentiable w.r.t. `input`.
    Chapter: nbs/07_roipool_vs_roialign.ipynb
    """
    if isinstance(boxes, tape.Tensor):
        boxes = boxes.data
    return _roi_warp(input, boxes, output_size=output_size, spatial_scale=spatial_scale,
                     sampling_ratio=sampling_ratio, aggregation=aggregation)


roi_warp.forward = roi_warp_forward
roi_warp.backward = roi_warp_backward
