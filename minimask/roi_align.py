"""RoIAlign: a fixed (ph, pw) grid of bins in each box, bilinear samples in each bin, their average.

Shapes:  input (N, C, H, W); boxes (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels,
         or a list of N arrays (K_i, 4); output (K, C, ph, pw)
Coords:  `spatial_scale` (1 / stride) maps image pixels onto the map. `aligned=True` shifts the box
         by -0.5 map pixels, so that the continuous box meets pixel *centres* (Detectron2; our
         model). `aligned=False` is torchvision's default (its Mask R-CNN uses it): no shift, and
         boxes smaller than 1x1 are stretched to 1x1.
Samples: `sampling_ratio` points per bin and axis; <= 0 means adaptive, ceil(roi_h / ph) per RoI.
         A sample outside [-1, H] x [-1, W] contributes zero (the average still counts it).
Layout:  the NumPy body is channel-last: the map becomes (N*H*W, C) rows, a bin is a weighted sum
         of the rows its samples touch (one gather + one small matmul), and bilinear weights are
         separable, so each RoI only needs per-axis "taps" (pixel index, weight).
Kernel:  kernels/roi_align.cu is the CUDA twin (same helper names); CuPy inputs run it.
Chapter: nbs/07_roipool_vs_roialign.ipynb    Paper: Mask R-CNN (He et al. 2017), Sec. 3
"""

from __future__ import annotations

import numpy as np

from . import tape
from .backend import get_array_module, scatter_add

# Bytes of gathered rows per chunk: small enough to stay in cache, big enough to amortise Python.
_CHUNK_BYTES = 2 << 20

# ------------------------------------------------------------------------------------------------
# input checks shared by roi_align, roi_pool and the poolers
# ------------------------------------------------------------------------------------------------


def _pair(output_size):
    """int or (h, w) -> (h, w) of positive ints."""
    if isinstance(output_size, (int, np.integer)):
        output_size = (int(output_size), int(output_size))
    try:
        ph, pw = (int(v) for v in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"output_size must be an int or a pair of ints, got {output_size!r}") from None
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got {(ph, pw)}")
    return ph, pw


def convert_boxes_to_roi_format(boxes, xp=None):
    """(K, 5) rois pass through; a list of per-image (K_i, 4) boxes becomes (K, 5) with index i."""
    if isinstance(boxes, (list, tuple)):
        xp = xp or get_array_module(*boxes)
        parts = []
        for i, b in enumerate(boxes):
            b = xp.asarray(b)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}] must have shape (K_i, 4), got {tuple(b.shape)}")
            parts.append(xp.concatenate([xp.full((b.shape[0], 1), i, dtype=b.dtype), b], axis=1))
        if not parts:
            return xp.zeros((0, 5), dtype=np.float32)
        return xp.concatenate(parts, axis=0)
    xp = xp or get_array_module(boxes)
    boxes = xp.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (K, 5) rows (batch_index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
    return boxes


def check_rois(name, input, boxes):
    """Validate (input, boxes); return rois (K, 5) in the input's float dtype."""
    xp = get_array_module(input)
    if input.ndim != 4:
        raise ValueError(f"{name}: input must be (N, C, H, W), got shape {tuple(input.shape)}")
    if input.dtype.kind != "f":
        raise ValueError(f"{name}: input must be floating point, got {input.dtype}")
    rois = convert_boxes_to_roi_format(boxes, xp).astype(input.dtype, copy=False)
    if xp is np and rois.size:  # cheap host checks; on the device they would cost a sync
        if not np.isfinite(rois).all():
            raise ValueError(f"{name}: boxes contain non-finite values (boxes shape {tuple(rois.shape)})")
        b = rois[:, 0]
        if (b < 0).any() or (b >= input.shape[0]).any() or (b != np.floor(b)).any():
            raise ValueError(
                f"{name}: batch indices must be integers in [0, {input.shape[0]}) for input of shape "
                f"{tuple(input.shape)}, got values in [{b.min()}, {b.max()}]"
            )
    return rois


# ------------------------------------------------------------------------------------------------
# bilinear interpolation, one axis at a time
# ------------------------------------------------------------------------------------------------


def bilinear_taps(coord, size):
    """One axis of `bilinear_interpolate`: coordinates (...) -> (low, high, w_low, w_high).

    Same rules as the kernel: a coordinate outside [-1, size] gets zero weights; one in [-1, 0]
    is clamped to 0; one at or past size - 1 reads pixel size - 1 only.
    """
    xp = get_array_module(coord)
    inside = (coord >= -1.0) & (coord <= size)
    c = xp.clip(xp.where(inside, coord, 0), 0, size)        # clamp; also keeps int casts in range
    low = c.astype(np.int64)                                # floor, since c >= 0
    edge = low >= size - 1
    low = xp.where(edge, size - 1, low)
    high = xp.where(edge, size - 1, low + 1)
    c = xp.where(edge, low.astype(c.dtype), c)
    lo = c - low.astype(c.dtype)                            # distance past the low pixel
    w_low = xp.where(inside, 1 - lo, 0).astype(c.dtype)
    w_high = xp.where(inside, lo, 0).astype(c.dtype)
    return low, high, w_low, w_high


def bilinear_interpolate(input, y, x):
    """Sample a (C, H, W) map at points (y, x) (any broadcastable shape S) -> (C, *S).

    value = hy*hx * v(y_low, x_low) + hy*lx * v(y_low, x_high) + ly*hx * v(y_high, x_low)
          + ly*lx * v(y_high, x_high),    with ly = y - y_low, hy = 1 - ly (and the same in x).
    """
    _, H, W = input.shape
    y, x = get_array_module(input).broadcast_arrays(y, x)
    yl, yh, wyl, wyh = bilinear_taps(y, H)
    xl, xh, wxl, wxh = bilinear_taps(x, W)
    return (
        input[:, yl, xl] * (wyl * wxl) + input[:, yl, xh] * (wyl * wxh)
        + input[:, yh, xl] * (wyh * wxl) + input[:, yh, xh] * (wyh * wxh)
    )


# ------------------------------------------------------------------------------------------------
# the sampling grid
# ------------------------------------------------------------------------------------------------


def roi_align_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Per RoI: start, bin size and samples per bin along y and x (the kernel's first lines).

    rois (K, 5) float -> dict of (K,) arrays: batch, start_y, start_x, bin_h, bin_w (float),
    grid_h, grid_w (int >= 0).
    """
    xp = get_array_module(rois)
    ph, pw = output_size
    dt = rois.dtype.type
    offset = dt(0.5 if aligned else 0.0)   # aligned: pixel i covers [i, i+1), its centre is i + 0.5
    scale = dt(spatial_scale)
    start_x, start_y = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    end_x, end_y = rois[:, 3] * scale - offset, rois[:, 4] * scale - offset
    roi_w, roi_h = end_x - start_x, end_y - start_y
    if not aligned:  # legacy behaviour: force malformed boxes to 1x1
        roi_w, roi_h = xp.maximum(roi_w, 1), xp.maximum(roi_h, 1)
    bin_h, bin_w = roi_h / dt(ph), roi_w / dt(pw)
    if sampling_ratio > 0:
        grid_h = xp.full(rois.shape[0], sampling_ratio, dtype=np.int64)
        grid_w = grid_h
    else:  # adaptive: about one sample per map pixel
        grid_h = xp.maximum(xp.ceil(roi_h / dt(ph)), 0).astype(np.int64)
        grid_w = xp.maximum(xp.ceil(roi_w / dt(pw)), 0).astype(np.int64)
    return dict(batch=rois[:, 0].astype(np.int64), start_y=start_y, start_x=start_x,
                bin_h=bin_h, bin_w=bin_w, grid_h=grid_h, grid_w=grid_w)


def sample_points(start, bin_size, grid, pooled):
    """Sample coordinates along one axis: (K, pooled, G), G = max grid; entries i >= grid[k] unused.

    coord = start + p * bin_size + (i + 0.5) * bin_size / grid        (the kernel's formula)
    """
    xp = get_array_module(start)
    dt = start.dtype
    G = max(int(grid.max()), 1) if grid.size else 1             # host sync: a shape depends on it
    p = xp.arange(pooled, dtype=dt)[None, :, None]
    i = xp.arange(G, dtype=dt)[None, None, :] + dt.type(0.5)
    b = bin_size[:, None, None]
    g = xp.maximum(grid, 1).astype(dt)[:, None, None]
    coord = start[:, None, None] + p * b + i * b / g
    active = xp.arange(G)[None, None, :] < grid[:, None, None]
    return coord, active


def axis_taps(start, bin_size, grid, pooled, size):
    """Bilinear taps of every bin along one axis, repeated pixels merged.

    Returns idx (K, pooled, T) int, w (K, pooled, T), n (K, pooled) int: the first n[k, p] taps are
    distinct pixels with the summed weight of all samples on them, divided by grid (the average);
    the rest is padding (idx 0, w 0). A bin's 2-D weights are the outer product of its y and x taps.
    """
    xp = get_array_module(start)
    K = start.shape[0]
    coord, active = sample_points(start, bin_size, grid, pooled)
    low, high, w_low, w_high = bilinear_taps(coord, size)
    inv = (1 / xp.maximum(grid, 1).astype(start.dtype))[:, None, None]
    T = 2 * coord.shape[2]
    idx = xp.concatenate([low, high], axis=-1).reshape(K * pooled, T)         # (K*P, 2G)
    w = xp.concatenate([w_low, w_high], axis=-1) * inv
    w = xp.where(xp.concatenate([active, active], axis=-1), w, 0).reshape(K * pooled, T)
    # merge repeats: sort each bin's taps by pixel (zero weights last), sum runs of equal pixels
    idx = xp.where(w != 0, idx, size)
    order = xp.argsort(idx, axis=1, kind="stable")
    idx = xp.take_along_axis(idx, order, axis=1)
    w = xp.take_along_axis(w, order, axis=1)
    first = xp.ones(idx.shape, dtype=bool)
    first[:, 1:] = idx[:, 1:] != idx[:, :-1]
    slot = (xp.cumsum(first, axis=1) - 1) + (xp.arange(K * pooled) * T)[:, None]   # compact position
    w_c = xp.zeros(K * pooled * T, dtype=w.dtype)
    scatter_add(w_c, slot.reshape(-1), w.reshape(-1))
    idx_c = xp.zeros(K * pooled * T, dtype=np.int64)
    real = first & (idx < size)
    idx_c[slot[real]] = idx[real]
    n = real.sum(axis=1).reshape(K, pooled)
    Tn = max(int(n.max()), 1) if n.size else 1                              # host sync: a shape
    return (idx_c.reshape(K, pooled, T)[:, :, :Tn], w_c.reshape(K, pooled, T)[:, :, :Tn], n)


def roi_align_taps(input_shape, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Everything the forward and backward need: batch (K,), y taps and x taps (see `axis_taps`)."""
    _, _, H, W = input_shape
    ph, pw = output_size
    g = roi_align_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    ytaps = axis_taps(g["start_y"], g["bin_h"], g["grid_h"], ph, H)
    xtaps = axis_taps(g["start_x"], g["bin_w"], g["grid_w"], pw, W)
    return g["batch"], ytaps, xtaps


# ------------------------------------------------------------------------------------------------
# ragged bins as padded chunks
# ------------------------------------------------------------------------------------------------


def chunks_by_length(lengths, row_bytes, budget=_CHUNK_BYTES):
    """Split segments (bins, pixels) into chunks of similar length for a padded gather.

    Yields (ids, L): ids of segments with length > 0, sorted by length, and L their longest length,
    with len(ids) * L * row_bytes <= budget (or a single segment). A loop over cache-sized chunks
    of many bins each, not over RoIs: each chunk is one gather and one batched matmul (or max).
    """
    xp = get_array_module(lengths)
    order = xp.argsort(lengths, kind="stable")
    sorted_len = np.asarray(lengths[order].get() if xp is not np else lengths[order])  # host plan
    i = int(np.searchsorted(sorted_len, 0, side="right"))                              # skip empties
    rows = max(budget // max(row_bytes, 1), 1)
    n = sorted_len.size
    while i < n:
        cand = sorted_len[i:i + rows]
        cost = np.arange(1, cand.size + 1) * cand          # padded rows if the chunk ended here
        b = max(int(np.searchsorted(cost, rows, side="right")), 1)
        yield order[i:i + b], int(cand[b - 1])
        i += b


def _bin_taps(ids, L, batch, ytaps, xtaps, P, Q, H, W):
    """For bins `ids` (flat k*P*Q + p*Q + q): padded (B, L) pixel rows and weights of their taps."""
    xp = get_array_module(ids)
    yidx, yw, ny = ytaps
    xidx, xw, nx = xtaps
    k, p, q = ids // (P * Q), (ids // Q) % P, ids % Q
    j = xp.arange(L)[None, :]
    nxb = nx[k, q][:, None]
    ty = j // xp.maximum(nxb, 1)                          # tap j of the bin = (ty, tx), x fastest
    tx = j - ty * nxb
    valid = ty < ny[k, p][:, None]
    ty = xp.where(valid, ty, 0)
    kk, pp, qq = k[:, None], p[:, None], q[:, None]
    pix = (batch[kk] * H + yidx[kk, pp, ty]) * W + xidx[kk, qq, tx]
    w = xp.where(valid, yw[kk, pp, ty] * xw[kk, qq, tx], 0)
    return xp.where(valid, pix, 0), w, valid


def _tap_counts(ytaps, xtaps):
    """Number of (y, x) taps of every bin, flat (K*P*Q,)."""
    ny, nx = ytaps[2], xtaps[2]
    return (ny[:, :, None] * nx[:, None, :]).reshape(-1)


def _gather_weighted_sum(src, pix, w, buf=None):
    """sum_j w[b, j] * src[pix[b, j]] for every row b: one gather and one batched matmul."""
    xp = get_array_module(src)
    B, L = pix.shape
    C = src.shape[1]
    if buf is not None and buf.shape[0] >= B * L:
        g = xp.take(src, pix.reshape(-1), axis=0, out=buf[: B * L])
    else:
        g = xp.take(src, pix.reshape(-1), axis=0)
    return xp.matmul(w[:, None, :], g.reshape(B, L, C))[:, 0, :]


# ------------------------------------------------------------------------------------------------
# the op
# ------------------------------------------------------------------------------------------------


def roi_align_forward(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign. input (N, C, H, W), boxes (K, 5) -> (K, C, ph, pw); cache for the backward."""
    xp = get_array_module(input)
    rois = check_rois("roi_align", input, boxes)
    ph, pw = _pair(output_size)
    settings = (float(spatial_scale), int(sampling_ratio), bool(aligned))
    if xp is not np:  # CuPy: the CUDA kernel (kernels/roi_align.cu)
        from . import kernels

        out = kernels.roi_align_forward_kernel(input, rois, (ph, pw), *settings)
        return out, ("kernel", rois, input.shape, (ph, pw), settings)
    N, C, H, W = input.shape
    K = rois.shape[0]
    batch, ytaps, xtaps = roi_align_taps(input.shape, rois, (ph, pw), *settings)
    x_cl = xp.ascontiguousarray(input.transpose(0, 2, 3, 1)).reshape(N * H * W, C)   # (NHW, C)
    out_cl = xp.zeros((K * ph * pw, C), dtype=input.dtype)
    row_bytes = C * input.dtype.itemsize
    buf = xp.empty((max(_CHUNK_BYTES // max(row_bytes, 1), 1), C), dtype=input.dtype)
    for ids, L in chunks_by_length(_tap_counts(ytaps, xtaps), row_bytes):
        pix, w, _ = _bin_taps(ids, L, batch, ytaps, xtaps, ph, pw, H, W)
        out_cl[ids] = _gather_weighted_sum(x_cl, pix, w, buf)
    out = xp.ascontiguousarray(out_cl.reshape(K, ph, pw, C).transpose(0, 3, 1, 2))
    return out, ("numpy", batch, ytaps, xtaps, input.shape, (ph, pw))


def roi_align_backward(dout, cache):
    """d input (N, C, H, W): every bin's gradient spread over its taps with the forward's weights.

    forward was: out[k, :, p, q] = sum over taps (ty, tx) of wy[ty] * wx[tx] * x[n_k, :, y[ty], x[tx]]
    so d x[n, :, h, w] = sum over all (bin, tap) reaching pixel (n, h, w) of wy * wx * dout[bin].
    NumPy: instead of scattering rows (np.add.at on rows is slow) the taps are sorted by pixel and
    each pixel gathers its own sum, one padded chunk at a time; every pixel is written once.
    """
    xp = get_array_module(dout)
    if cache[0] == "kernel":
        from . import kernels

        _, rois, shape, size, settings = cache
        return kernels.roi_align_backward_kernel(dout, rois, shape, size, *settings), None
    _, batch, ytaps, xtaps, shape, (ph, pw) = cache
    N, C, H, W = shape
    K = dout.shape[0]
    grad_cl = xp.zeros((N * H * W, C), dtype=dout.dtype)
    counts = _tap_counts(ytaps, xtaps)
    total = int(counts.sum())
    if total:
        # all (bin, pixel, weight) triples, in one padded pass per chunk of bins
        bins = xp.nonzero(counts)[0]
        L = int(counts.max())
        pix_all, w_all, bin_all = [], [], []
        step = max((1 << 22) // L, 1)
        for s in range(0, bins.size, step):  # bounded temporary size, not a loop over RoIs
            ids = bins[s:s + step]
            pix, w, valid = _bin_taps(ids, L, batch, ytaps, xtaps, ph, pw, H, W)
            pix_all.append(pix[valid])
            w_all.append(w[valid])
            bin_all.append(xp.broadcast_to(ids[:, None], valid.shape)[valid])
        pix, w, src = xp.concatenate(pix_all), xp.concatenate(w_all), xp.concatenate(bin_all)
        order = xp.argsort(pix)                                    # group the taps by pixel
        pix, w, src = pix[order], w[order], src[order]
        starts = xp.flatnonzero(xp.concatenate([xp.ones(1, bool), pix[1:] != pix[:-1]]))
        per_pixel = xp.diff(xp.concatenate([starts, xp.asarray([pix.size])]))
        g_cl = xp.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(K * ph * pw, C)
        row_bytes = C * dout.dtype.itemsize
        buf = xp.empty((max(_CHUNK_BYTES // max(row_bytes, 1), 1), C), dtype=dout.dtype)
        for ids, Lp in chunks_by_length(per_pixel, row_bytes):
            j = xp.arange(Lp)[None, :]
            valid = j < per_pixel[ids][:, None]
            t = xp.where(valid, starts[ids][:, None] + j, 0)
            wt = xp.where(valid, w[t], 0)
            grad_cl[pix[starts[ids]]] = _gather_weighted_sum(g_cl, src[t], wt, buf)   # unique pixels
    grad = xp.ascontiguousarray(grad_cl.reshape(N, H, W, C).transpose(0, 3, 1, 2))
    return grad, None


_roi_align = tape.op(roi_align_forward, roi_align_backward, name="roi_align")


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign with torchvision's signature; differentiable w.r.t. `input` (boxes get no gradient).

    input (N, C, H, W) array or Tensor; boxes (K, 5) (batch_index, x1, y1, x2, y2) or a list of
    (K_i, 4); output_size int or (ph, pw) -> Tensor (K, C, ph, pw). CuPy inputs run the CUDA kernel.
    Chapter: nbs/07_roipool_vs_roialign.ipynb
    """
    if isinstance(boxes, tape.Tensor):
        boxes = boxes.data
    if isinstance(boxes, (list, tuple)):
        boxes = [b.data if isinstance(b, tape.Tensor) else b for b in boxes]
    return _roi_align(input, boxes, output_size=output_size, spatial_scale=spatial_scale,
                      sampling_ratio=sampling_ratio, aligned=aligned)


roi_align.forward = roi_align_forward
roi_align.backward = roi_align_backward
