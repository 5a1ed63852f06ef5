"""RoIPool (Fast R-CNN): snap each box to whole map pixels, cut it into (ph, pw) bins, max per bin.

Shapes:  input (N, C, H, W); boxes (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels,
         or a list of N arrays (K_i, 4); output (K, C, ph, pw), argmax (K, C, ph, pw) int
Coords:  box corners are *rounded* to map pixels (x * spatial_scale, half away from zero), the box
         includes both end pixels (size x2 - x1 + 1, at least 1); bin p spans rows
         [floor(p * bin_h), ceil((p + 1) * bin_h)) of the box, clipped to the map. These two
         roundings are the quantisation that RoIAlign removes.
Argmax:  the flat index h * W + w of the winning pixel in its (H, W) plane (first one on ties,
         scanning rows then columns), -1 for an empty bin (whose output is 0). The backward sends
         each bin's gradient to that one pixel.
Kernel:  kernels/roi_pool.cu is the CUDA twin; CuPy inputs run it.
Chapter: nbs/07_roipool_vs_roialign.ipynb    Paper: Fast R-CNN (Girshick 2015), Sec. 2.1
"""

from __future__ import annotations

import numpy as np

from . import fast, kernels, tape
from .backend import get_array_module, scatter_add, to_host
from .fast import roi_pool as pool_engine
from .roi_align import check_rois, output_pair


def round_half_away(v):
    """C's round(): halves go away from zero (NumPy's round goes to even)."""
    xp = get_array_module(v)
    return xp.sign(v) * xp.floor(xp.abs(v) + v.dtype.type(0.5))


def roi_pool_bins(rois, output_size, spatial_scale, height, width):
    """Integer bin edges: batch (K,), hstart/hend (K, ph), wstart/wend (K, pw), clipped to the map."""
    xp = get_array_module(rois)
    ph, pw = output_size
    dt = rois.dtype.type
    scale = dt(spatial_scale)
    start_w = round_half_away(rois[:, 1] * scale).astype(np.int64)
    start_h = round_half_away(rois[:, 2] * scale).astype(np.int64)
    end_w = round_half_away(rois[:, 3] * scale).astype(np.int64)
    end_h = round_half_away(rois[:, 4] * scale).astype(np.int64)
    roi_w = xp.maximum(end_w - start_w + 1, 1)          # both end pixels count
    roi_h = xp.maximum(end_h - start_h + 1, 1)
    bin_h = (roi_h.astype(rois.dtype) / dt(ph))[:, None]
    bin_w = (roi_w.astype(rois.dtype) / dt(pw))[:, None]
    p = xp.arange(ph, dtype=rois.dtype)[None, :]
    q = xp.arange(pw, dtype=rois.dtype)[None, :]
    hstart = xp.floor(p * bin_h).astype(np.int64) + start_h[:, None]
    hend = xp.ceil((p + 1) * bin_h).astype(np.int64) + start_h[:, None]
    wstart = xp.floor(q * bin_w).astype(np.int64) + start_w[:, None]
    wend = xp.ceil((q + 1) * bin_w).astype(np.int64) + start_w[:, None]
    return (rois[:, 0].astype(np.int64), xp.clip(hstart, 0, height), xp.clip(hend, 0, height),
            xp.clip(wstart, 0, width), xp.clip(wend, 0, width))


def roi_pool_forward(input, boxes, output_size, spatial_scale=1.0):
    """RoIPool. input (N, C, H, W), boxes (K, 5) -> (K, C, ph, pw); cache = argmax for the backward."""
    xp = get_array_module(input)
    rois = check_rois("roi_pool", input, boxes)
    ph, pw = output_pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    if xp is not np:  # CuPy: the CUDA kernel (kernels/roi_pool.cu)
        out, argmax = kernels.roi_pool_forward_kernel(input, rois, (ph, pw), float(spatial_scale))
        return out, (argmax, rois, input.shape)
    bins = roi_pool_bins(rois, (ph, pw), spatial_scale, H, W)
    if fast.pick_roi_pool():  # the same maxima in chunked gathers (fast/roi_pool.py)
        out, argmax = pool_engine.forward(input, bins, (ph, pw))
        return out, (argmax, rois, input.shape)
    batch, hs, he, ws, we = (to_host(v) for v in bins)
    out = xp.zeros((K, C, ph, pw), dtype=input.dtype)                 # empty bins stay 0 ...
    argmax = xp.full((K, C, ph, pw), -1, dtype=np.int32)               # ... with argmax -1 (int32 as the kernel)
    for k in range(K):
        for p in range(ph):
            for q in range(pw):
                h0, h1, w0, w1 = hs[k, p], he[k, p], ws[k, q], we[k, q]
                if h1 <= h0 or w1 <= w0:
                    continue
                region = input[batch[k], :, h0:h1, w0:w1].reshape(C, -1)   # (C, bin pixels), rows first
                first = region.argmax(axis=1)                              # the first maximum wins ties
                out[k, :, p, q] = region[xp.arange(C), first]
                argmax[k, :, p, q] = (h0 + first // (w1 - w0)) * W + w0 + first % (w1 - w0)
    return out, (argmax, rois, input.shape)


def roi_pool_backward(dout, cache):
    """d input: each bin's gradient goes to its argmax pixel (repeats summed), none from empty bins.

    forward was: out[k, c, p, q] = x[n_k, c, argmax[k, c, p, q]]
    """
    argmax, rois, (N, C, H, W) = cache
    xp = get_array_module(dout)
    if xp is not np:
        return kernels.roi_pool_backward_kernel(dout, argmax, rois, (N, C, H, W)), None
    K = dout.shape[0]
    batch = rois[:, 0].astype(np.int64)
    plane = (batch[:, None] * C + xp.arange(C)[None, :]) * (H * W)   # (K, C) start of each plane
    flat = plane[:, :, None, None] + argmax                           # (K, C, ph, pw)
    hit = argmax >= 0
    grad = xp.zeros(N * C * H * W, dtype=dout.dtype)
    if K:
        scatter_add(grad, flat[hit], dout[hit])
    return grad.reshape(N, C, H, W), None


_roi_pool = tape.op(roi_pool_forward, roi_pool_backward, name="roi_pool")


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """RoIPool with torchvision's signature; differentiable w.r.t. `input` through the argmax.

    input (N, C, H, W) array or Tensor; boxes (K, 5) or a list of (K_i, 4); output_size int or
    (ph, pw) -> Tensor (K, C, ph, pw). CuPy inputs run the CUDA kernel.
    Chapter: nbs/07_roipool_vs_roialign.ipynb
    """
    if isinstance(boxes, tape.Tensor):
        boxes = boxes.data
    if isinstance(boxes, (list, tuple)):
        boxes = [b.data if isinstance(b, tape.Tensor) else b for b in boxes]
    return _roi_pool(input, boxes, output_size=output_size, spatial_scale=spatial_scale)


roi_pool.forward = roi_pool_forward
roi_pool.backward = roi_pool_backward
