"""Chapter 15 solutions: RoIWarp's bin edges, the multinomial mask loss, the benchmark's criterion, one RoIAlign
bin with average or max aggregation."""

import numpy as np

from minimask.roi_align import bilinear_interpolate


def roi_warp_bin_edges(x1, x2, pooled, spatial_scale):
    def round_half_away(v):                                     # C's round(), as RoIPool: 2.5 -> 3, not 2
        return np.sign(v) * np.floor(np.abs(v) + 0.5)

    a = round_half_away(x1 * spatial_scale)                     # first cell of the snapped box
    b = max(round_half_away(x2 * spatial_scale) + 1, a + 1)     # last cell included, at least one cell
    return a + (b - a) * np.arange(pooled + 1) / pooled         # equal bins in [a, b): no second rounding


def softmax_mask_loss(mask_logits, labels, mask_targets):
    target = np.where(mask_targets >= 0.5, labels[:, None, None], 0)          # (P, M, M): class, 0 = background
    z = mask_logits - mask_logits.max(axis=1, keepdims=True)                  # stable log-softmax over K
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))                  # (P, K, M, M)
    picked = np.take_along_axis(log_p, target[:, None].astype(np.int64), axis=1)[:, 0]   # (P, M, M)
    return float(-picked.mean())                                              # over P * M * M pixels


def direction_verdict(better, worse):
    b, w = np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)
    diff = b.mean() - w.mean()                                  # difference of the arms' means
    range_b, range_w = b.max() - b.min(), w.max() - w.min()     # each arm's seed range
    if diff > range_b and diff > range_w:
        return "REPRODUCED"
    if -diff > range_b and -diff > range_w:
        return "REVERSED"
    return "INCONCLUSIVE"


def roi_align_bin(feature, box, p, q, pooled, grid, aggregation):
    x1, y1, x2, y2 = box
    bin_h, bin_w = (y2 - y1) / pooled, (x2 - x1) / pooled      # aligned=True: no minimum size
    ys = y1 - 0.5 + p * bin_h + (np.arange(grid) + 0.5) * bin_h / grid     # half-pixel shift, sample centres
    xs = x1 - 0.5 + q * bin_w + (np.arange(grid) + 0.5) * bin_w / grid
    samples = bilinear_interpolate(feature, ys[:, None], xs[None, :]).reshape(len(feature), -1)   # (C, grid^2)
    return samples.mean(axis=1) if aggregation == "avg" else samples.max(axis=1)
