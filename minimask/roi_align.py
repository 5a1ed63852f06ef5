"""RoIAlign: a fixed (ph, pw) grid of bins in each box, bilinear samples in each bin, their average.

Shapes:  input (N, C, H, W); boxes (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels,
         or a list of N arrays (K_i, 4); output (K, C, ph, pw)
Coords:  `spatial_scale` (1 / stride) maps image pixels onto the map. `aligned=True` shifts the box
         by -0.5 map pixels, so that the continuous box meets pixel *centres* (Detectron2; our
         model). `aligned=False` is torchvision's default (its Mask R-CNN uses it): no shift, and
         boxes smaller than 1x1 are stretched to 1x1.
Samples: `sampling_ratio` points per bin and axis; <= 0 means adaptive, ceil(roi_h / ph) per RoI.
         A sample outside [-1, H] x [-1, W] contributes zero (the average still counts it).
Layout:  the NumPy reference goes one RoI at a time: `bilinear_interpolate` reads all of the RoI's
         samples at once and each bin averages its own; the backward scatters the same four weights
         with `scatter_add`. The tap engine (fast/roi_align.py, chapter 14) computes the same sums as
         channel-last gathers and small matmuls, using that bilinear weights are separable.
Kernel:  kernels/roi_align.cu is the CUDA twin (same helper names); CuPy inputs run it.
Chapter: nbs/07_roipool_vs_roialign.ipynb    Paper: Mask R-CNN (He et al. 2017), Sec. 3
"""

from __future__ import annotations

import numpy as np

from . import fast, kernels, tape
from .backend import get_array_module, scatter_add
from .fast import roi_align as tap_engine
from .utils import pair

# ------------------------------------------------------------------------------------------------
# input checks shared by roi_align, roi_pool and the poolers
# ------------------------------------------------------------------------------------------------


def output_pair(output_size):
    """int or (h, w) -> (h, w) of positive ints."""
    return pair(output_size, "output_size", 1)


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


def sample_points(start, bin_size, grid, pooled, max_grid=None):
    """Sample coordinates along one axis: (K, pooled, G), G = max grid; entries i >= grid[k] unused.

    coord = start + p * bin_size + (i + 0.5) * bin_size / grid        (the kernel's formula)
    max_grid: G when the caller knows it (a fixed sampling ratio), which saves the host sync.
    """
    xp = get_array_module(start)
    dt = start.dtype
    if max_grid is not None:
        G = max(int(max_grid), 1)
    else:
        G = max(int(grid.max()), 1) if grid.size else 1         # host sync: a shape depends on it
    p = xp.arange(pooled, dtype=dt)[None, :, None]
    i = xp.arange(G, dtype=dt)[None, None, :] + dt.type(0.5)
    b = bin_size[:, None, None]
    g = xp.maximum(grid, 1).astype(dt)[:, None, None]
    coord = start[:, None, None] + p * b + i * b / g
    active = xp.arange(G)[None, None, :] < grid[:, None, None]
    return coord, active


# ------------------------------------------------------------------------------------------------
# the op
# ------------------------------------------------------------------------------------------------


def _samples(rois, input_shape, output_size, settings):
    """Geometry and sample coordinates of every RoI: (g, (ycoord, yactive), (xcoord, xactive)), (K, P, G)."""
    g = roi_align_geometry(rois, output_size, *settings)
    ys = sample_points(g["start_y"], g["bin_h"], g["grid_h"], output_size[0])
    xs = sample_points(g["start_x"], g["bin_w"], g["grid_w"], output_size[1])
    return g, ys, xs


def roi_align_forward(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign. input (N, C, H, W), boxes (K, 5) -> (K, C, ph, pw); cache for the backward.

    out[k, c, p, q] = mean over the bin's grid_h x grid_w samples (y, x) of bilinear_interpolate(x[n_k, c], y, x)
    (an empty grid gives 0), as kernels/roi_align.cu computes it, one thread per output element.
    """
    xp = get_array_module(input)
    rois = check_rois("roi_align", input, boxes)
    ph, pw = output_pair(output_size)
    settings = (float(spatial_scale), int(sampling_ratio), bool(aligned))
    if xp is not np:  # CuPy: the CUDA kernel (kernels/roi_align.cu)
        out = kernels.roi_align_forward_kernel(input, rois, (ph, pw), *settings)
        return out, ("kernel", rois, input.shape, (ph, pw), settings)
    N, C, H, W = input.shape
    K = rois.shape[0]
    g, (ycoord, yact), (xcoord, xact) = _samples(rois, input.shape, (ph, pw), settings)
    if fast.pick_roi_align():  # the tap engine: the same sums as gathers and matmuls (fast/roi_align.py)
        ytaps = tap_engine.axis_taps(bilinear_taps(ycoord, H), yact, g["grid_h"], H)
        xtaps = tap_engine.axis_taps(bilinear_taps(xcoord, W), xact, g["grid_w"], W)
        if tap_engine.use_dense(input.shape, K, input.dtype.itemsize):   # few channels: two GEMMs per RoI
            out, state = tap_engine.forward_dense(input, g["batch"], ytaps, xtaps, (ph, pw))
            return out, ("dense", state)
        out, state = tap_engine.forward(input, g["batch"], ytaps, xtaps, (ph, pw))
        return out, ("fast", state)
    out = xp.zeros((K, C, ph, pw), dtype=input.dtype)
    grids = [(int(g["batch"][k]), int(g["grid_h"][k]), int(g["grid_w"][k])) for k in range(K)]
    for k, (n, gh, gw) in enumerate(grids):  # one RoI at a time (the kernel: one thread per element)
        y = ycoord[k, :, :gh][:, :, None, None]                        # (ph, gh, 1, 1) sample rows
        x = xcoord[k, :, :gw][None, None, :, :]                        # (1, 1, pw, gw) sample columns
        v = bilinear_interpolate(input[n], y, x)                       # (C, ph, gh, pw, gw)
        out[k] = v.sum(axis=(2, 4)) / input.dtype.type(max(gh * gw, 1))   # the mean over the bin's samples
    return out, ("ref", rois, input.shape, (ph, pw), settings)


def roi_align_backward(dout, cache):
    """d input (N, C, H, W): each sample scatters dout / count with its four bilinear weights.

    forward was: out[k, :, p, q] = 1/count * sum over samples of  hy*hx * v(y_low, x_low) + hy*lx * v(y_low, x_high)
                                                                 + ly*hx * v(y_high, x_low) + ly*lx * v(y_high, x_high)
    so each of the four pixels receives its weight times dout[k, :, p, q] / count; samples of many bins and
    RoIs land on one pixel, so they add (scatter_add; the kernel's atomicAdd).
    """
    xp = get_array_module(dout)
    if cache[0] == "kernel":
        _, rois, shape, size, settings = cache
        return kernels.roi_align_backward_kernel(dout, rois, shape, size, *settings), None
    if cache[0] == "fast":
        return tap_engine.backward(dout, cache[1]), None
    if cache[0] == "dense":
        return tap_engine.backward_dense(dout, cache[1]), None
    _, rois, shape, (ph, pw), settings = cache
    N, C, H, W = shape
    g, (ycoord, _), (xcoord, _) = _samples(rois, shape, (ph, pw), settings)
    grad = xp.zeros(N * C * H * W, dtype=dout.dtype)                   # flat (N, C, H, W)
    for k in range(rois.shape[0]):
        n, gh, gw = int(g["batch"][k]), int(g["grid_h"][k]), int(g["grid_w"][k])
        if gh * gw == 0:
            continue
        y_low, y_high, wy_low, wy_high = (t[:, :, None, None] for t in bilinear_taps(ycoord[k, :, :gh], H))
        x_low, x_high, wx_low, wx_high = (t[None, None] for t in bilinear_taps(xcoord[k, :, :gw], W))
        d = dout[k][:, :, None, :, None] / dout.dtype.type(gh * gw)  # (C, ph, 1, pw, 1): each sample's share
        plane = ((n * C + xp.arange(C)) * (H * W))[:, None, None, None, None]   # (C, 1, 1, 1, 1) plane starts
        index, value = [], []
        for yi, wy in ((y_low, wy_low), (y_high, wy_high)):             # the four weights w1..w4 of the kernel
            for xi, wx in ((x_low, wx_low), (x_high, wx_high)):
                index.append((plane + yi * W + xi).ravel())              # (C, ph, gh, pw, gw) pixel of each sample
                value.append((d * (wy * wx)).ravel())
        scatter_add(grad, xp.concatenate(index), xp.concatenate(value))  # repeats add (the kernel: atomicAdd)
    return grad.reshape(shape), None


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
