"""Exercises of chapters 06-08: greedy and class-wise NMS, RoIAlign by hand, its sample points and
bilinear interpolation, and the CUDA kernels' index arithmetic.

Chapters: nbs/06_nms.ipynb, nbs/07_roipool_vs_roialign.ipynb, nbs/08_cuda_kernels.ipynb
"""

from __future__ import annotations

import numpy as np

from .. import boxes as mboxes
from ..nms import batched_nms, nms
from ..roi_align import bilinear_interpolate, roi_align_forward, roi_align_geometry, sample_points
from ..roi_pool import roi_pool_forward
from ._core import check_forward, exercise

# ------------------------------------------------------------------------------------------------
# chapter 06
# ------------------------------------------------------------------------------------------------


def _nms_probes():
    r = np.random.default_rng(80)
    xy, wh = r.uniform(0, 60, (40, 2)), r.uniform(10, 30, (40, 2))
    rand = (np.concatenate([xy, xy + wh], axis=1), r.permutation(40) / 40.0, 0.5)
    # a chain: A suppresses B, B would suppress C, A does not touch C -> keep A and C
    chain = (np.array([[0.0, 0, 10, 10], [4, 0, 14, 10], [9, 0, 19, 10]]), np.array([0.9, 0.8, 0.7]), 0.4)
    # IoU exactly 0.5 at threshold 0.5: not suppressed (torchvision drops only IoU > threshold)
    tie = (np.array([[0.0, 0, 10, 10], [0, 0, 10, 5], [30, 30, 40, 40]]), np.array([0.6, 0.9, 0.2]), 0.5)
    return [rand, chain, tie]


@exercise("06.1", "greedy_nms",
          "greedy NMS: (N, 4) boxes, (N,) scores, threshold -> kept indices by decreasing score")
def check_greedy_nms(fn):
    def loop(b, s, t, order_by_score=True, ge=False, all_suppress=False, sort_out=True):
        order = np.argsort(-s, kind="stable") if order_by_score else np.arange(len(s))
        iou = mboxes.box_iou(b, b)
        alive, keep = np.ones(len(s), bool), []
        for i in order:
            if not alive[i] and not all_suppress:
                continue
            if alive[i]:
                keep.append(i)
            over = iou[i] >= t if ge else iou[i] > t
            later = np.zeros(len(s), bool)
            later[order[list(order).index(i) + 1:]] = True
            alive &= ~(over & later)
        keep = np.array(keep, dtype=np.int64)
        return keep if sort_out else np.sort(keep)

    mistakes = [
        ("boxes visited in input order: greedy NMS visits them by decreasing score",
         lambda b, s, t: loop(b, s, t, order_by_score=False)),
        ("suppression at IoU >= threshold: a box is dropped only when IoU > threshold (torchvision)",
         lambda b, s, t: loop(b, s, t, ge=True)),
        ("suppressed boxes allowed to suppress others: only KEPT boxes remove their neighbours",
         lambda b, s, t: loop(b, s, t, all_suppress=True)),
        ("the kept indices returned in index order: they come sorted by decreasing score",
         lambda b, s, t: loop(b, s, t, sort_out=False)),
    ]
    return check_forward("06.1", fn, nms, _nms_probes(), mistakes)


@exercise("06.2", "class_wise_nms",
          "NMS within each class: boxes (N, 4), scores (N,), labels (N,) int, threshold -> kept indices by score")
def check_class_wise_nms(fn):
    r = np.random.default_rng(81)
    xy, wh = r.uniform(0, 40, (30, 2)), r.uniform(10, 30, (30, 2))
    b = np.concatenate([xy, xy + wh], axis=1)
    probes = [(b, r.permutation(30) / 30.0, r.integers(0, 3, 30), 0.5),
              (np.array([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]]), np.array([0.9, 0.8, 0.7]),
               np.array([1, 1, 2]), 0.5)]

    def by_class_order(b, s, lab, t):
        keep = batched_nms(b, s, lab, t)
        return keep[np.argsort(lab[keep], kind="stable")]

    mistakes = [
        ("the classes ignored: a box only suppresses boxes of its own class", lambda b, s, lab, t: nms(b, s, t)),
        ("the result grouped by class: batched_nms returns all kept boxes by decreasing score", by_class_order),
    ]
    return check_forward("06.2", fn, batched_nms, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 07
# ------------------------------------------------------------------------------------------------

FEATURE_5X5 = np.arange(25, dtype=np.float64).reshape(5, 5)   # value 5 y + x at row y, column x


def _align(box, aligned=False, sampling_ratio=2, feature=FEATURE_5X5, size=2):
    rois = np.array([[0.0, *box]])
    return roi_align_forward(feature[None, None], rois, size, 1.0, sampling_ratio, aligned)[0][0, 0]


@exercise("07.1", "roi_align_5x5",
          "predict RoIAlign's 2x2 output on the 5x5 map arange(25) for a box, aligned=False, sampling_ratio=2")
def check_roi_align_5x5(fn):
    # boxes whose samples stay inside the map with and without the half-pixel shift
    probes = [((1.0, 1.0, 3.0, 3.0),), ((0.75, 0.75, 4.0, 4.0),), ((1.5, 1.0, 2.5, 4.0),), ((1.0, 0.75, 4.0, 2.75),)]
    mistakes = [
        ("the half-pixel offset applied: that is aligned=True; aligned=False samples the box as it is",
         lambda box: _align(box, aligned=True)),
        ("RoIPool's answer (bins rounded to whole pixels, then a max): RoIAlign averages bilinear samples",
         lambda box: roi_pool_forward(FEATURE_5X5[None, None], np.array([[0.0, *box]]), 2)[0][0, 0]),
        ("a transposed index: rows are y, columns x (value 5 y + x)", lambda box: _align(box).T),
        ("samples taken at the bin corners instead of their centres",
         lambda box: _align((box[0] - (box[2] - box[0]) / 8, box[1] - (box[3] - box[1]) / 8,
                             box[2] - (box[2] - box[0]) / 8, box[3] - (box[3] - box[1]) / 8))),
    ]
    return check_forward("07.1", fn, lambda box: _align(box), probes, mistakes,
                         hint="the map is linear, so a bin's average of bilinear samples is the value at its centre.")


def _points_ref(x1, x2, pooled, grid, aligned, spatial_scale):
    rois = np.array([[0.0, x1, x1, x2, x2]])
    g = roi_align_geometry(rois, (pooled, pooled), spatial_scale, grid, aligned)
    coord, _ = sample_points(g["start_x"], g["bin_w"], g["grid_w"], pooled)
    return coord[0]                                                    # (pooled, grid)


@exercise("07.2", "sample_coords",
          "RoIAlign's sample coordinates along one axis: box x1, x2 in image pixels -> (pooled, grid) map coords")
def check_sample_coords(fn):
    probes = [(8.0, 40.0, 7, 2, True, 1 / 8), (8.0, 40.0, 7, 2, False, 1 / 8), (3.0, 11.0, 4, 3, True, 0.5),
              (10.0, 12.0, 2, 2, False, 0.25), (0.0, 28.0, 14, 1, True, 1.0)]

    def variant(x1, x2, P, G, aligned, scale, offset=True, edges=False, min1=True, shift_bin=False):
        start = x1 * scale - (0.5 if aligned and offset else 0.0)
        roi = (x2 - x1) * scale
        if not aligned and min1:
            roi = max(roi, 1.0)
        b = roi / P
        p = np.arange(P)[:, None] + (1 if shift_bin else 0)
        i = np.arange(G)[None, :] + (0.0 if edges else 0.5)
        return start + p * b + i * b / G

    mistakes = [
        ("a missing half-pixel offset: aligned=True shifts the box by -0.5 map pixels",
         lambda *a: variant(*a, offset=False)),
        ("samples on the bin edges: sample i of a bin sits at (i + 0.5) * bin_size / grid",
         lambda *a: variant(*a, edges=True)),
        ("an off-by-one bin: bin p starts at start + p * bin_size, p from 0", lambda *a: variant(*a, shift_bin=True)),
        ("aligned=False's minimum box size forgotten: such boxes are stretched to at least 1x1 map pixel",
         lambda *a: variant(*a, min1=False)),
    ]
    return check_forward("07.2", fn, _points_ref, probes, mistakes)


def _bilinear_ref(feature, y, x):
    return bilinear_interpolate(feature[None], y, x)[0]


@exercise("07.3", "bilinear",
          "bilinear interpolation of an (H, W) map at points (y, x), zero outside [-1, H] x [-1, W], as RoIAlign")
def check_bilinear(fn):
    r = np.random.default_rng(82)
    feat = r.standard_normal((6, 6))      # square, so that a transposed index still reads inside the map
    probes = [(feat, r.uniform(0, 5, 12), r.uniform(0, 5, 12)),
              (feat, np.array([-0.5, 5.2, -1.5, 2.0, 0.0, 4.999, 6.5]), np.array([2.5, 3.5, 1.0, -0.7, 5.0, 1.5, 2.0]))]

    def variant(f, y, x, swap=False):
        H, W = f.shape
        out = np.zeros(np.shape(y))
        for k, (yy, xx) in enumerate(zip(np.ravel(y), np.ravel(x), strict=True)):
            if yy < -1 or yy > H or xx < -1 or xx > W:
                continue
            yy, xx = max(yy, 0.0), max(xx, 0.0)
            y0, x0 = min(int(yy), H - 1), min(int(xx), W - 1)
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            ly, lx = (0.0 if y0 == H - 1 else yy - y0), (0.0 if x0 == W - 1 else xx - x0)
            hy, hx = 1 - ly, 1 - lx
            if swap:
                ly, hy, lx, hx = hy, ly, hx, lx
            out.flat[k] = hy * hx * f[y0, x0] + hy * lx * f[y0, x1] + ly * hx * f[y1, x0] + ly * lx * f[y1, x1]
        return out

    mistakes = [
        ("a transposed index: the map is indexed feature[y, x], rows first",
         lambda f, y, x: _bilinear_ref(f.T.copy(), y, x)),
        ("the weights swapped: the low pixel gets 1 - (y - y_low), the high one y - y_low",
         lambda f, y, x: variant(f, y, x, swap=True)),
        ("points outside the map not zeroed: a sample beyond [-1, H] x [-1, W] contributes 0",
         lambda f, y, x: _bilinear_ref(f, np.clip(y, 0, f.shape[0] - 1), np.clip(x, 0, f.shape[1] - 1))),
    ]
    return check_forward("07.3", fn, _bilinear_ref, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 08
# ------------------------------------------------------------------------------------------------


@exercise("08.1", "unravel_output_index",
          "a RoI kernel thread's flat output index -> (n, c, ph, pw) for a C-ordered (K, C, PH, PW) output")
def check_unravel(fn):
    probes = [(np.arange(2 * 3 * 4 * 5), 2, 3, 4, 5), (np.array([0, 7, 48, 200, 419]), 3, 4, 5, 7)]

    def ref(index, K, C, PH, PW):
        return tuple(np.unravel_index(index, (K, C, PH, PW)))

    def swapped(index, K, C, PH, PW):
        n, c, a, b = np.unravel_index(index, (K, C, PW, PH))
        return n, c, b, a

    mistakes = [
        ("a transposed index: pw varies fastest in a C-ordered (K, C, PH, PW) array, so pw = index % PW",
         swapped),
        ("the wrong modulus: ph = (index // PW) % PH (divide by the faster axis, wrap by its own size)",
         lambda i, K, C, PH, PW: (i // (PW * PH * C), (i // (PW * PH)) % C, (i // PW) % PW, i % PW)),
    ]
    return check_forward("08.1", fn, ref, probes, mistakes)


@exercise("08.2", "grid_stride_indices",
          "the output elements one thread handles in a grid-stride loop (global thread id, n, threads, blocks)")
def check_grid_stride(fn):
    probes = [(0, 100, 8, 5), (13, 100, 8, 5), (39, 100, 8, 5), (7, 30, 4, 2), (3, 2, 4, 2)]
    mistakes = [
        ("a stride of blockDim.x only: the loop must step over the whole grid, blockDim.x * gridDim.x",
         lambda t, n, th, b: np.arange(t, n, th)),
        ("an off-by-one end: the loop runs while index < n", lambda t, n, th, b: np.arange(t, n + 1, th * b)),
        ("the thread's start taken as threadIdx.x: start at the GLOBAL id blockIdx.x * blockDim.x + threadIdx.x",
         lambda t, n, th, b: np.arange(t % th, n, th * b)),
    ]
    return check_forward("08.2", fn, lambda t, n, th, b: np.arange(t, n, th * b), probes, mistakes)


def _nms_word_ref(iou, row, col_block, threshold):
    word = 0
    for j in range(64):
        col = col_block * 64 + j
        if col < iou.shape[1] and col > row and iou[row, col] > threshold:
            word |= 1 << j
    return word


@exercise("08.3", "nms_mask_word",
          "the NMS kernel's 64-bit word mask[row, col_block] from an (n, n) IoU matrix (boxes sorted by score)")
def check_nms_word(fn):
    r = np.random.default_rng(83)
    xy, wh = r.uniform(0, 100, (150, 2)), r.uniform(20, 60, (150, 2))
    b = np.concatenate([xy, xy + wh], axis=1)
    iou = mboxes.box_iou(b, b)
    coarse = np.round(iou, 1)                      # many IoUs exactly at the threshold
    probes = [(iou, 10, 0, 0.3), (iou, 10, 1, 0.3), (iou, 70, 1, 0.3), (iou, 100, 2, 0.2), (iou, 149, 1, 0.1),
              (coarse, 5, 0, 0.3), (coarse, 80, 1, 0.2)]

    def variant(iou, row, cb, t, all_cols=False, ge=False, block_off=0):
        word = 0
        for j in range(64):
            col = (cb + block_off) * 64 + j
            if col < iou.shape[1] and (all_cols or col > row) and col != row and (
                    iou[row, col] >= t if ge else iou[row, col] > t):
                word |= 1 << j
        return word

    mistakes = [
        ("bits set for boxes ranked above the row box: only boxes after `row` can be suppressed by it",
         lambda *a: variant(*a, all_cols=True)),
        ("IoU >= threshold: the kernel (and torchvision) suppress only when IoU > threshold",
         lambda *a: variant(*a, ge=True)),
        ("an off-by-one block: bit j of the word is box col_block * 64 + j", lambda *a: variant(*a, block_off=1)),
    ]
    return check_forward("08.3", fn, _nms_word_ref, probes, mistakes)
