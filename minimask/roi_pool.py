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

from . import tape
from .backend import get_array_module, scatter_add
from .roi_align import _pair, check_rois, chunks_by_length


def _round_half_away(v):
    """C's round(): halves go away from zero (NumPy's round goes to even)."""
    xp = get_array_module(v)
    return xp.sign(v) * xp.floor(xp.abs(v) + v.dtype.type(0.5))


def roi_pool_bins(rois, output_size, spatial_scale, height, width):
    """Integer bin edges: batch (K,), hstart/hend (K, ph), wstart/wend (K, pw), clipped to the map."""
    xp = get_array_module(rois)
    ph, pw = output_size
    dt = rois.dtype.type
    scale = dt(spatial_scale)
    start_w = _round_half_away(rois[:, 1] * scale).astype(np.int64)
    start_h = _round_half_away(rois[:, 2] * scale).astype(np.int64)
    end_w = _round_half_away(rois[:, 3] * scale).astype(np.int64)
    end_h = _round_half_away(rois[:, 4] * scale).astype(np.int64)
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
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    if xp is not np:  # CuPy: the CUDA kernel (kernels/roi_pool.cu)
        from . import kernels

        out, argmax = kernels.roi_pool_forward_kernel(input, rois, (ph, pw), float(spatial_scale))
        return out, (argmax, rois, input.shape)
    batch, hs, he, ws, we = roi_pool_bins(rois, (ph, pw), spatial_scale, H, W)
    bh = xp.maximum(he - hs, 0)[:, :, None]                            # (K, ph, 1)
    bw = xp.maximum(we - ws, 0)[:, None, :]                            # (K, 1, pw)
    area = (bh * bw).reshape(-1)                                       # (K*ph*pw,) pixels per bin
    # channel-last rows (N*H*W, C), plus one row of -inf that the padding of short bins reads
    x_cl = xp.empty((N * H * W + 1, C), dtype=input.dtype)
    x_cl[:-1] = input.transpose(0, 2, 3, 1).reshape(N * H * W, C)
    x_cl[-1] = -xp.inf
    out_cl = xp.zeros((K * ph * pw, C), dtype=input.dtype)              # empty bins stay 0
    arg_cl = xp.full((K * ph * pw, C), -1, dtype=np.int32)              # ... with argmax -1 (int32 as the kernel)
    for ids, L in chunks_by_length(area, C * input.dtype.itemsize):
        k, p, q = ids // (ph * pw), (ids // pw) % ph, ids % pw
        j = xp.arange(L)[None, :]
        wide = (we[k, q] - ws[k, q])[:, None]
        dy = j // wide                                                 # pixel j of the bin: rows
        dx = j - dy * wide                                             # first, then columns
        valid = j < area[ids][:, None]
        plane = (hs[k, p][:, None] + dy) * W + ws[k, q][:, None] + dx  # (B, L) index in the H*W plane
        rows = xp.where(valid, batch[k][:, None] * (H * W) + plane, N * H * W)
        g = xp.take(x_cl, rows.reshape(-1), axis=0).reshape(ids.size, L, C)
        # max over each bin's pixels, then its first position: j = L - max_j (best at j) * (L - j)
        best = g.max(axis=1)                                           # (B, C)
        first = xp.arange(L, 0, -1, dtype=np.int16 if L < 2**15 else np.int32)[None, :, None]
        pick = L - xp.where(g == best[:, None, :], first, 0).max(axis=1)
        pick = xp.minimum(pick, L - 1).astype(np.int64)                # (a NaN bin matches nowhere)
        out_cl[ids] = best
        arg_cl[ids] = xp.take_along_axis(plane, pick, axis=1)
    out = xp.ascontiguousarray(out_cl.reshape(K, ph, pw, C).transpose(0, 3, 1, 2))
    argmax = xp.ascontiguousarray(arg_cl.reshape(K, ph, pw, C).transpose(0, 3, 1, 2))
    return out, (argmax, rois, input.shape)


def roi_pool_backward(dout, cache):
    """d input: each bin's gradient goes to its argmax pixel (repeats summed), none from empty bins.

    forward was: out[k, c, p, q] = x[n_k, c, argmax[k, c, p, q]]
    """
    argmax, rois, (N, C, H, W) = cache
    xp = get_array_module(dout)
    if xp is not np:
        from . import kernels

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
