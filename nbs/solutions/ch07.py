"""Chapter 07 solutions: RoIAlign on the 5x5 arange map by hand, sample coordinates, bilinear."""

import numpy as np


def roi_align_5x5(box):
    # The map is linear (value 5 y + x), and bilinear interpolation of a linear map is exact, so the
    # average of a bin's 2x2 samples is the value at the bin's centre. aligned=False: no shift.
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, 1.0) / 2, max(y2 - y1, 1.0) / 2
    cy = y1 + (np.arange(2) + 0.5) * bh
    cx = x1 + (np.arange(2) + 0.5) * bw
    return 5 * cy[:, None] + cx[None, :]


def sample_coords(x1, x2, pooled, grid, aligned, spatial_scale):
    offset = 0.5 if aligned else 0.0
    start = x1 * spatial_scale - offset                 # aligned: pixel centres sit at i + 0.5
    roi = (x2 - x1) * spatial_scale
    if not aligned:
        roi = max(roi, 1.0)                             # legacy: at least one map pixel
    bin_size = roi / pooled
    p = np.arange(pooled)[:, None]
    i = np.arange(grid)[None, :]
    return start + p * bin_size + (i + 0.5) * bin_size / grid


def bilinear(feature, y, x):
    H, W = feature.shape
    y, x = np.broadcast_arrays(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64))
    out = np.zeros(y.shape)
    for k in np.ndindex(y.shape):
        yy, xx = y[k], x[k]
        if yy < -1 or yy > H or xx < -1 or xx > W:
            continue                                    # too far outside: contributes zero
        yy, xx = max(yy, 0.0), max(xx, 0.0)
        y0, x0 = int(yy), int(xx)
        if y0 >= H - 1:
            y0 = y1 = H - 1
            yy = float(y0)
        else:
            y1 = y0 + 1
        if x0 >= W - 1:
            x0 = x1 = W - 1
            xx = float(x0)
        else:
            x1 = x0 + 1
        ly, lx = yy - y0, xx - x0
        hy, hx = 1 - ly, 1 - lx
        out[k] = (hy * hx * feature[y0, x0] + hy * lx * feature[y0, x1]
                  + ly * hx * feature[y1, x0] + ly * lx * feature[y1, x1])
    return out
