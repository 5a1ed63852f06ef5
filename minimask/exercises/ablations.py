"""Exercises of chapter 15, the paper's Table 2 ablations: RoIWarp's snapped bins, the multinomial (softmax)
mask loss of Table 2b, the benchmark's REPRODUCED / REVERSED / INCONCLUSIVE criterion, and one RoIAlign bin
with average or max aggregation (Table 2c).

Chapter: nbs/15_ablations.ipynb
"""

from __future__ import annotations

import numpy as np

from ..mask_head import maskrcnn_loss
from ..mask_softmax import maskrcnn_loss_softmax
from ..roi_align import roi_align_forward
from ..roi_align_max import roi_align_max_forward
from ..roi_warp import quantize_rois
from ..tape import Tensor
from ._core import check_forward, exercise

# ------------------------------------------------------------------------------------------------
# 15.1 RoIWarp's bins along one axis
# ------------------------------------------------------------------------------------------------


def _warp_edges_ref(x1, x2, pooled, spatial_scale):
    """The pooled + 1 bin edges of RoIWarp along one axis, in map cells (cell i covers [i, i + 1))."""
    rois = np.array([[0.0, x1, x1, x2, x2]])
    snapped = quantize_rois(rois, spatial_scale)[0]                    # the box RoIPool would use, whole cells
    a, b = snapped[1] * spatial_scale, snapped[3] * spatial_scale
    return a + (b - a) * np.arange(pooled + 1) / pooled


@exercise("15.1", "roi_warp_bin_edges",
          "RoIWarp's pooled + 1 bin edges along one axis (map cells): box x1, x2 in image pixels, pooled, scale")
def check_roi_warp_bin_edges(fn):
    # x * scale lands on .5 in three probes: round half away from zero (C's round) and half to even differ there
    probes = [(40.0, 100.0, 4, 1 / 16), (8.0, 72.0, 2, 1 / 16), (13.0, 30.0, 7, 1 / 8), (100.3, 101.0, 2, 1 / 32),
              (3.0, 61.0, 14, 1 / 4), (20.0, 52.0, 3, 1 / 8)]

    def edges(x1, x2, P, s, rnd=None, end_cell=1.0, snap=True):
        rnd = rnd or (lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5))
        a, b = (rnd(x1 * s), max(rnd(x2 * s) + end_cell, rnd(x1 * s) + 1)) if snap else (x1 * s, x2 * s)
        return a + (b - a) * np.arange(P + 1) / P

    mistakes = [
        ("round half to even (np.round / Python's round): RoIPool and RoIWarp round half away from zero, as C's "
         "round()", lambda *a: edges(*a, rnd=np.round)),
        ("the end cell left out: RoIPool's snapped box includes both end cells, [round(x1 s), round(x2 s) + 1)",
         lambda *a: edges(*a, end_cell=0.0)),
        ("no snapping: that is RoIAlign's box; RoIWarp first snaps it to whole cells, as RoIPool does",
         lambda *a: edges(*a, snap=False)),
        ("the bin edges rounded too: that is RoIPool (floor / ceil); RoIWarp cuts the snapped box into equal bins",
         lambda *a: np.floor(_warp_edges_ref(*a))),
        ("the half-pixel offset subtracted: the edges are asked in cell-edge coordinates, where the snapped box "
         "is [a, b) exactly", lambda *a: _warp_edges_ref(*a) - 0.5),
    ]
    return check_forward("15.1", fn, _warp_edges_ref, probes, mistakes,
                         hint="snap the box to cells as RoIPool does (roi_pool.py), then cut it into equal bins.")


# ------------------------------------------------------------------------------------------------
# 15.2 the multinomial mask loss of Table 2b
# ------------------------------------------------------------------------------------------------


def _softmax_loss_ref(mask_logits, labels, mask_targets):
    return float(maskrcnn_loss_softmax(Tensor(mask_logits), labels, mask_targets).data)


def _log_softmax(m):
    z = m - m.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))             # (P, K, M, M)


@exercise("15.2", "softmax_mask_loss",
          "Table 2b's multinomial mask loss: per-pixel softmax over K channels (0: background), "
          "mask_logits (P, K, M, M), labels (P,), mask_targets (P, M, M) -> a number")
def check_softmax_mask_loss(fn):
    r = np.random.default_rng(150)
    hard = (r.normal(0, 2, (4, 5, 6, 6)), r.integers(1, 5, 4), (r.uniform(0, 1, (4, 6, 6)) > 0.5).astype(np.float64))
    soft = r.uniform(0, 1, (3, 5, 5))
    soft[0, 0, :3] = 0.5                                                 # exactly 0.5: the object's class (>= 0.5)
    probes = [hard, (r.normal(0, 2, (3, 3, 5, 5)), r.integers(1, 3, 3), soft)]

    def pixel_classes(lab, t, everywhere=False):
        return np.broadcast_to(lab[:, None, None], t.shape) if everywhere else np.where(t >= 0.5, lab[:, None, None], 0)

    def picked(m, cls):
        return np.take_along_axis(_log_softmax(m), cls[:, None].astype(np.int64), axis=1)[:, 0]   # (P, M, M)

    def soft_mix(m, lab, t):
        logp = _log_softmax(m)
        return float(-(t * logp[np.arange(len(lab)), lab] + (1 - t) * logp[:, 0]).mean())

    mistakes = [
        ("the per-class sigmoid: that is Mask R-CNN's own loss (chapter 10); Table 2b's multinomial loss is a "
         "softmax over the K channels at every pixel", lambda m, lab, t: float(maskrcnn_loss(Tensor(m), lab, t).data)),
        ("no background: pixels outside the object are not skipped, their target is class 0 (background)",
         lambda m, lab, t: float(-picked(m, pixel_classes(lab, t))[t >= 0.5].mean())),
        ("every pixel given the RoI's class: outside the mask the target is background (channel 0)",
         lambda m, lab, t: float(-picked(m, pixel_classes(lab, t, everywhere=True)).mean())),
        ("soft targets mixed (t log p_class + (1 - t) log p_background): a class index cannot be fractional, the "
         "target is thresholded at 0.5", soft_mix),
        ("a sum instead of the mean over the P * M * M pixels",
         lambda m, lab, t: float(-picked(m, pixel_classes(lab, t)).sum())),
    ]
    return check_forward("15.2", fn, _softmax_loss_ref, probes, mistakes, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# 15.3 the benchmark's criterion
# ------------------------------------------------------------------------------------------------


def _verdict_ref(better, worse):
    """benchmarks/ablations.py's criterion for "better beats worse" on one metric, from each arm's seed values."""
    b, w = np.asarray(better, np.float64), np.asarray(worse, np.float64)
    diff = float(b.mean() - w.mean())
    range_b, range_w = float(b.max() - b.min()), float(w.max() - w.min())
    if diff > range_b and diff > range_w:
        return "REPRODUCED"
    if -diff > range_b and -diff > range_w:
        return "REVERSED"
    return "INCONCLUSIVE"


VERDICT_PROBES = [([30.1, 31.0], [25.0, 26.2]), ([25.0, 26.2], [30.1, 31.0]), ([10.0, 12.0], [9.0, 9.5]),
                  ([20.0, 20.4], [18.0, 21.0]), ([5.0, 6.0, 7.0], [2.0, 2.5, 3.5]), ([11.0, 12.0], [10.5, 10.5]),
                  ([40.2, 41.0], [41.5, 40.9]), ([18.0, 18.5], [19.0, 22.0])]


@exercise("15.3", "direction_verdict",
          "the criterion of benchmarks/ablations.py: seed values of the arm the paper says is better and of the "
          "other -> 'REPRODUCED', 'REVERSED' or 'INCONCLUSIVE'")
def check_direction_verdict(fn):
    def verdict(b, w, spread=lambda v: v.max() - v.min(), ge=False, signed=True, only_better=False):
        b, w = np.asarray(b, np.float64), np.asarray(w, np.float64)
        d = b.mean() - w.mean()
        spreads = [spread(b)] + ([] if only_better else [spread(w)])

        def beats(x):
            return all(x >= s if ge else x > s for s in spreads)

        if beats(d if signed else abs(d)):
            return "REPRODUCED"
        return "REVERSED" if beats(-d) else "INCONCLUSIVE"

    def intervals(b, w):
        if min(b) > max(w):
            return "REPRODUCED"
        return "REVERSED" if min(w) > max(b) else "INCONCLUSIVE"

    mistakes = [
        ("the standard deviation instead of the range: each arm's spread is max - min over its seeds",
         lambda b, w: verdict(b, w, spread=np.std)),
        ("the seed intervals compared (no overlap): the criterion compares the difference of the MEANS with each "
         "arm's range", intervals),
        ("only the better arm's range: the difference must exceed BOTH arms' ranges",
         lambda b, w: verdict(b, w, only_better=True)),
        (">= instead of >: a difference equal to a range is not enough", lambda b, w: verdict(b, w, ge=True)),
        ("the sign ignored: when the other arm is better by more than both ranges, the direction is REVERSED",
         lambda b, w: verdict(b, w, signed=False)),
    ]
    return check_forward("15.3", fn, _verdict_ref, [(list(b), list(w)) for b, w in VERDICT_PROBES], mistakes)


# ------------------------------------------------------------------------------------------------
# 15.4 one RoIAlign bin, average or max
# ------------------------------------------------------------------------------------------------


def _bin_ref(feature, box, p, q, pooled, grid, aggregation, aligned=True):
    """Bin (p, q) of RoIAlign (aggregation "avg") or RoIAlign-max ("max") on feature (C, H, W), scale 1 -> (C,)."""
    forward = roi_align_forward if aggregation == "avg" else roi_align_max_forward
    return forward(feature[None], np.array([[0.0, *box]]), pooled, 1.0, grid, aligned)[0][0, :, p, q]


@exercise("15.4", "roi_align_bin",
          "one bin (p, q) of RoIAlign, aligned=True, spatial_scale 1, grid x grid samples, aggregation 'avg' or "
          "'max': feature (C, H, W), box (x1, y1, x2, y2) -> (C,)")
def check_roi_align_bin(fn):
    r = np.random.default_rng(151)
    feat = r.standard_normal((2, 9, 9))
    probes = [(feat, (1.3, 2.2, 7.1, 6.4), 1, 2, 3, 2, "max"), (feat, (1.3, 2.2, 7.1, 6.4), 1, 2, 3, 2, "avg"),
              (feat, (0.6, 0.9, 8.2, 8.5), 0, 1, 2, 3, "max"), (feat, (3.0, 3.0, 5.0, 6.5), 1, 0, 2, 2, "max"),
              (feat, (0.6, 0.9, 8.2, 8.5), 1, 1, 2, 3, "avg")]

    def taps_max(feature, box, p, q, pooled, grid, aggregation):
        if aggregation == "avg":
            return _bin_ref(feature, box, p, q, pooled, grid, "avg")
        x1, y1, x2, y2 = box
        bh, bw = (y2 - y1) / pooled, (x2 - x1) / pooled
        ys = y1 - 0.5 + p * bh + (np.arange(grid) + 0.5) * bh / grid
        xs = x1 - 0.5 + q * bw + (np.arange(grid) + 0.5) * bw / grid
        H, W = feature.shape[1:]
        rows = np.unique(np.clip(np.concatenate([np.floor(ys), np.floor(ys) + 1]).astype(int), 0, H - 1))
        cols = np.unique(np.clip(np.concatenate([np.floor(xs), np.floor(xs) + 1]).astype(int), 0, W - 1))
        return feature[:, rows][:, :, cols].reshape(len(feature), -1).max(axis=1)

    mistakes = [
        ("the aggregation ignored (always the mean): 'max' keeps the largest of the bin's bilinear samples",
         lambda f, b, p, q, P, g, agg: _bin_ref(f, b, p, q, P, g, "avg")),
        ("the aggregation ignored (always the max): 'avg' is the mean of the bin's bilinear samples",
         lambda f, b, p, q, P, g, agg: _bin_ref(f, b, p, q, P, g, "max")),
        ("a missing half-pixel offset: aligned=True shifts the box by -0.5 map pixels",
         lambda f, b, p, q, P, g, agg: _bin_ref(f, b, p, q, P, g, agg, aligned=False)),
        ("the max over the pixels the samples read (their bilinear neighbours): RoIAlign-max keeps the largest "
         "interpolated SAMPLE, a value between pixels", taps_max),
    ]
    return check_forward("15.4", fn, _bin_ref, probes, mistakes,
                         hint="chapter 07's sample coordinates and bilinear_interpolate, then mean or max per bin.")
