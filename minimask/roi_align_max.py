"""RoIAlign with max aggregation: the same bilinear samples as RoIAlign, but each bin keeps its largest.

Shapes:  input (N, C, H, W); boxes (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or
         a list of (K_i, 4); output (K, C, ph, pw)
Coords:  exactly roi_align's (roi_align_geometry, sample_points, bilinear_taps): `aligned`,
         `sampling_ratio` (<= 0: adaptive) and the zero value of a sample outside the map
Max:     out[k, c, p, q] = max over the bin's grid_h x grid_w samples of bilinear(x[n_k, c], y, x);
         an empty bin (adaptive grid of 0) gives 0. The backward sends each bin's gradient to its
         winning sample, which spreads it over its four pixels with its bilinear weights (ties: the
         first sample in row-major order wins, as numpy's argmax).
Why:     the paper's Table 2c separates the three changes RoIPool -> RoIAlign: the rounding of the
         box (RoIWarp keeps it, roi_warp.py), bilinear sampling, and max vs average per bin; this
         is the "RoIAlign, max" row. No CUDA kernel: vectorised xp code (runs on CuPy as written).
Chapter: nbs/07_roipool_vs_roialign.ipynb    Paper: Mask R-CNN (He et al. 2017), Table 2c
"""

from __future__ import annotations

from . import tape
from .backend import get_array_module, scatter_add
from .roi_align import bilinear_taps, check_rois, output_pair, roi_align_geometry, sample_points


def _axis_taps(start, bin_size, grid, pooled, size, sampling_ratio):
    """(low, high, w_low, w_high, active), each (K, pooled, G), of every sample along one axis."""
    coord, active = sample_points(start, bin_size, grid, pooled,
                                  max_grid=sampling_ratio if sampling_ratio > 0 else None)
    return bilinear_taps(coord, size) + (active,)


def roi_align_max_forward(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """input (N, C, H, W), boxes (K, 5) -> (K, C, ph, pw): the max of each bin's bilinear samples."""
    xp = get_array_module(input)
    rois = check_rois("roi_align_max", input, boxes)
    ph, pw = output_pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    g = roi_align_geometry(rois, (ph, pw), float(spatial_scale), int(sampling_ratio), bool(aligned))
    yl, yh, wyl, wyh, yact = _axis_taps(g["start_y"], g["bin_h"], g["grid_h"], ph, H, int(sampling_ratio))  # (K, ph, G)
    xl, xh, wxl, wxh, xact = _axis_taps(g["start_x"], g["bin_w"], g["grid_w"], pw, W, int(sampling_ratio))  # (K, pw, G)
    Gy, Gx = yl.shape[2], xl.shape[2]
    b = g["batch"][:, None, None, None, None]                                   # (K, 1, 1, 1, 1)

    def corner(yi, xi, wy, wx):   # x[n_k, :, y, x] * weight for every sample: (K, ph, Gy, pw, Gx, C)
        v = input[b, :, yi[:, :, :, None, None], xi[:, None, None, :, :]]
        return v * (wy[:, :, :, None, None] * wx[:, None, None, :, :])[..., None]

    # value = hy*hx v(y_low, x_low) + hy*lx v(y_low, x_high) + ly*hx v(y_high, x_low) + ly*lx v(y_high, x_high)
    v = corner(yl, xl, wyl, wxl) + corner(yl, xh, wyl, wxh) + corner(yh, xl, wyh, wxl) + corner(yh, xh, wyh, wxh)
    active = yact[:, :, :, None, None] & xact[:, None, None, :, :]             # (K, ph, Gy, pw, Gx)
    v = xp.where(active[..., None], v, -xp.inf)
    v = v.transpose(0, 1, 3, 2, 4, 5).reshape(K, ph, pw, Gy * Gx, C)            # samples of a bin together
    arg = v.argmax(axis=3)                                                       # (K, ph, pw, C) winner
    best = xp.take_along_axis(v, arg[:, :, :, None, :], axis=3)[:, :, :, 0]      # (K, ph, pw, C)
    nonempty = active.any(axis=(2, 4))                                           # (K, ph, pw)
    out = xp.where(nonempty[..., None], best, 0).astype(input.dtype, copy=False)
    taps = (yl, yh, wyl, wyh, xl, xh, wxl, wxh)
    return out.transpose(0, 3, 1, 2).copy(), (g["batch"], taps, arg, nonempty, Gx, input.shape)


def roi_align_max_backward(dout, cache):
    """d input (N, C, H, W): each bin's gradient goes to its winning sample's four pixels.

    forward was: out[k, c, p, q] = hy*hx v(y_low, x_low) + hy*lx v(y_low, x_high) + ly*hx v(y_high, x_low)
                                   + ly*lx v(y_high, x_high)   at the winning sample (i*, j*) of the bin
    so pixel v(y_low, x_low) receives hy*hx * dout[k, c, p, q], and so on; repeats add (scatter_add).
    """
    batch, (yl, yh, wyl, wyh, xl, xh, wxl, wxh), arg, nonempty, Gx, (N, C, H, W) = cache
    xp = get_array_module(dout)
    K, _, ph, pw = dout.shape
    grad = xp.zeros(N * C * H * W, dtype=dout.dtype)                       # flat (N, C, H, W)
    if K == 0:
        return grad.reshape(N, C, H, W), None
    iy, ix = arg // Gx, arg % Gx                                           # (K, ph, pw, C) winner's (i, j)
    k = xp.arange(K)[:, None, None, None]
    p = xp.arange(ph)[None, :, None, None]
    q = xp.arange(pw)[None, None, :, None]
    c = xp.arange(C)[None, None, None, :]
    plane = (batch[:, None, None, None] * C + c) * (H * W)                 # (K, 1, 1, C) plane starts
    d = dout.transpose(0, 2, 3, 1) * nonempty[..., None]                   # (K, ph, pw, C), empty bins: 0
    index, value = [], []
    for yi, wy in ((yl, wyl), (yh, wyh)):                                  # the four pixels of the winner
        for xi, wx in ((xl, wxl), (xh, wxh)):
            index.append((plane + yi[k, p, iy] * W + xi[k, q, ix]).ravel())
            value.append((d * wy[k, p, iy] * wx[k, q, ix]).ravel())
    scatter_add(grad, xp.concatenate(index), xp.concatenate(value))
    return grad.reshape(N, C, H, W), None


_roi_align_max = tape.op(roi_align_max_forward, roi_align_max_backward, name="roi_align_max")


def roi_align_max(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign with max instead of average per bin; roi_align's signature, differentiable w.r.t. `input`.
    Chapter: nbs/07_roipool_vs_roialign.ipynb
    """
    if isinstance(boxes, tape.Tensor):
        boxes = boxes.data
    return _roi_align_max(input, boxes, output_size=output_size, spatial_scale=spatial_scale,
                          sampling_ratio=sampling_ratio, aligned=aligned)


roi_align_max.forward = roi_align_max_forward
roi_align_max.backward = roi_align_max_backward

__all__ = ["roi_align_max", "roi_align_max_forward", "roi_align_max_backward"]
