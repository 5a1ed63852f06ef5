"""Exercises of chapters 03-05: pyramid shapes, receptive fields, parameter counts, IoU, the box
coder, anchors, matching, the RPN box loss and the sampler.

Chapters: nbs/03_resnet_fpn.ipynb, nbs/04_boxes_and_anchors.ipynb, nbs/05_rpn.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from .. import anchors, boxes, losses
from ..conv import conv_output_size
from ..matching import Matcher
from ..module import Sequential
from ..resnet import Bottleneck, _conv, make_norm
from ._core import check_forward, exercise

# ------------------------------------------------------------------------------------------------
# chapter 03
# ------------------------------------------------------------------------------------------------


def _pyramid_ref(h, w):
    H, W = 32 * math.ceil(h / 32), 32 * math.ceil(w / 32)     # the transform pads to multiples of 32
    sizes = []
    for n in (H, W):
        n = conv_output_size(n, 7, 2, 3)                        # stem conv 7x7 / 2
        n = conv_output_size(n, 3, 2, 1)                        # max-pool 3x3 / 2 -> C2
        levels = [n]
        for _ in range(3):                                      # layer2..layer4: 3x3 / 2 -> C3..C5
            n = conv_output_size(n, 3, 2, 1)
            levels.append(n)
        levels.append(conv_output_size(n, 1, 2, 0))             # P6: max-pool kernel 1, stride 2
        sizes.append(levels)
    return (H, W), [(a, b) for a, b in zip(*sizes, strict=True)]


@exercise("03.1", "pyramid_shapes",
          "for a resized image (h, w): the padded size (multiples of 32) and the (height, width) of P2..P6")
def check_pyramid_shapes(fn):
    probes = [(800, 1216), (480, 640), (427, 640), (333, 500), (97, 130)]

    def floor_pad(h, w):
        H, W = 32 * (h // 32), 32 * (w // 32)
        return (H, W), _pyramid_ref(H, W)[1]

    def p6_floor(h, w):
        (H, W), lv = _pyramid_ref(h, w)
        return (H, W), lv[:4] + [(lv[3][0] // 2, lv[3][1] // 2)]

    def one_level_off(h, w):
        (H, W), _ = _pyramid_ref(h, w)
        return (H, W), [(math.ceil(H / 2 ** k), math.ceil(W / 2 ** k)) for k in range(3, 8)]

    mistakes = [
        ("padding rounded down: the transform pads up to the next multiple of 32, it never crops", floor_pad),
        ("P6 = P5 // 2: max-pool with kernel 1, stride 2 keeps every other pixel from 0, ceil(n / 2) of them",
         p6_floor),
        ("an off-by-one level: P2 has stride 4 (2^2), P6 stride 64", one_level_off),
    ]
    return check_forward("03.1", fn, _pyramid_ref, probes, mistakes)


def _rf_ref(layers):
    r, jump = 1, 1
    for k, s in layers:
        r += (k - 1) * jump            # a k-tap layer sees k neighbours, `jump` input pixels apart
        jump *= s
    return r


@exercise("03.2", "receptive_field",
          "theoretical receptive field (in input pixels) of one output pixel of a stack of (kernel, stride) layers")
def check_receptive_field(fn):
    probes = [([(3, 1), (3, 1)],), ([(7, 2), (3, 2)],), ([(7, 2), (3, 2), (3, 1), (3, 1), (3, 2), (3, 1)],),
              ([(1, 1), (3, 2), (1, 1), (3, 2), (1, 2)],)]

    def no_jump(layers):
        return 1 + sum(k - 1 for k, _ in layers)

    def own_stride(layers):
        r, jump = 1, 1
        for k, s in layers:
            jump *= s
            r += (k - 1) * jump
        return r

    mistakes = [
        ("the strides ignored: a layer widens the field by (k - 1) times the product of the strides BEFORE it",
         no_jump),
        ("an off-by-one layer: a layer's own stride does not widen its own field, only the layers after it",
         own_stride),
        ("an off-by-one start: a stack of 1x1 layers sees 1 pixel, so start from r = 1",
         lambda layers: _rf_ref(layers) - 1),
    ]
    return check_forward("03.2", fn, _rf_ref, probes, mistakes)


def _bottleneck(inplanes, planes, stride, norm, conv_bias=False):
    down = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        down = Sequential([_conv(inplanes, planes * 4, 1, stride=stride, rng=np.random.default_rng(0)),
                           make_norm(norm, planes * 4)])
    return Bottleneck(inplanes, planes, stride, down, norm=norm, rng=np.random.default_rng(0))


def _bottleneck_ref(inplanes, planes, stride, norm):
    return _bottleneck(inplanes, planes, stride, norm).num_parameters()


@exercise("03.3", "bottleneck_num_parameters",
          "parameters of a ResNet bottleneck (inplanes, planes, stride, norm), with its downsample when needed")
def check_bottleneck_params(fn):
    probes = [(64, 64, 1, "frozen_bn"), (256, 64, 1, "frozen_bn"), (256, 128, 2, "group_norm"),
              (1024, 512, 2, "group_norm"), (512, 128, 1, "group_norm")]

    def convs(i, p):
        return i * p + p * p * 9 + p * 4 * p

    def norm_params(p, norm):
        return 0 if norm == "frozen_bn" else 2 * (p + p + 4 * p)

    def no_down(i, p, s, norm):
        return convs(i, p) + norm_params(p, norm)

    def with_bias(i, p, s, norm):
        down = s != 1 or i != 4 * p
        return _bottleneck_ref(i, p, s, norm) + p + p + 4 * p + (4 * p if down else 0)

    def frozen_counted(i, p, s, norm):
        return _bottleneck_ref(i, p, s, "group_norm")

    def no_expansion(i, p, s, norm):
        down = s != 1 or i != p
        n = i * p + p * p * 9 + p * p + (i * p if down else 0)
        return n + (0 if norm == "frozen_bn" else 2 * (3 * p + (p if down else 0)))

    mistakes = [
        ("the downsample shortcut forgotten: when the stride or the width changes, the shortcut is a 1x1 conv "
         "+ norm", no_down),
        ("conv biases counted: ResNet's convolutions have none (the norm's shift plays that role)", with_bias),
        ("frozen batch norm's scale and shift counted: they are buffers, not parameters", frozen_counted),
        ("the expansion forgotten: conv3 widens to 4 * planes channels", no_expansion),
    ]
    return check_forward("03.3", fn, _bottleneck_ref, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 04
# ------------------------------------------------------------------------------------------------


def _iou_probes():
    r = np.random.default_rng(70)
    out = []
    for n, m in ((5, 3), (4, 6)):
        xy = r.uniform(0, 40, (n + m, 2))
        wh = r.uniform(2, 30, (n + m, 2))
        b = np.concatenate([xy, xy + wh], axis=1)
        out.append((b[:n], b[n:]))
    a = np.array([[0.0, 0, 10, 10], [20, 20, 30, 40]])
    out.append((a, np.array([[5.0, 5, 15, 15], [0, 0, 10, 10], [40, 40, 50, 50]])))
    return out


@exercise("04.1", "box_iou", "pairwise IoU of boxes1 (N, 4) and boxes2 (M, 4), x1 y1 x2 y2 -> (N, M)")
def check_box_iou(fn):
    def plus_one(a, b):
        aw, ah = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
        bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
        iw = np.clip(np.minimum(a[:, None, 2], b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0]) + 1, 0, None)
        ih = np.clip(np.minimum(a[:, None, 3], b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1]) + 1, 0, None)
        inter = iw * ih
        return inter / ((aw * ah)[:, None] + bw * bh - inter)

    def parts(a, b, clamp=True):
        iw = np.minimum(a[:, None, 2], b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0])
        ih = np.minimum(a[:, None, 3], b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1])
        if clamp:
            iw, ih = np.clip(iw, 0, None), np.clip(ih, 0, None)
        return iw * ih, boxes.box_area(a)[:, None], boxes.box_area(b)[None, :]

    def no_clamp(a, b):
        inter, aa, ab = parts(a, b, clamp=False)
        return inter / (aa + ab - inter)

    def union_sum(a, b):
        inter, aa, ab = parts(a, b)
        return inter / (aa + ab)

    mistakes = [
        ("the old '+1 pixel' convention (width = x2 - x1 + 1); torchvision's width is x2 - x1", plus_one),
        ("the overlap not clamped at 0: two disjoint boxes give a negative width, and negative x negative > 0",
         no_clamp),
        ("the union counted the intersection twice: union = area1 + area2 - intersection", union_sum),
        ("a transposed result: row i is boxes1[i], column j is boxes2[j], (N, M)",
         lambda a, b: boxes.box_iou(b, a)),
    ]
    return check_forward("04.1", fn, boxes.box_iou, _iou_probes(), mistakes)


@exercise("04.2", "encode_boxes",
          "the regression targets (N, 4) that move proposals onto reference_boxes, with weights (wx, wy, ww, wh)")
def check_encode_boxes(fn):
    r = np.random.default_rng(71)
    probes = []
    for n, w in ((6, (1.0, 1.0, 1.0, 1.0)), (5, (10.0, 10.0, 5.0, 5.0))):
        xy, wh = r.uniform(0, 50, (2 * n, 2)), r.uniform(4, 40, (2 * n, 2))
        b = np.concatenate([xy, xy + wh], axis=1)
        probes.append((b[:n], b[n:], w))

    def cs(b):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return b[:, 0] + w / 2, b[:, 1] + h / 2, w, h

    def variant(ref, prop, weights, by_gt=False, inv_log=False, corners=False, divide=False):
        gx, gy, gw, gh = cs(ref)
        px, py, pw, ph = cs(prop)
        if corners:
            gx, gy, px, py = ref[:, 0], ref[:, 1], prop[:, 0], prop[:, 1]
        d = np.stack([(gx - px) / (gw if by_gt else pw), (gy - py) / (gh if by_gt else ph),
                      np.log(pw / gw) if inv_log else np.log(gw / pw),
                      np.log(ph / gh) if inv_log else np.log(gh / ph)], axis=1)
        wt = np.asarray(weights)
        return d / wt if divide else d * wt

    mistakes = [
        ("a sign error in dw, dh: the log is of target size / proposal size",
         lambda a, b, w: variant(a, b, w, inv_log=True)),
        ("the centre offset divided by the target's size instead of the proposal's",
         lambda a, b, w: variant(a, b, w, by_gt=True)),
        ("corners (x1, y1) used instead of centres", lambda a, b, w: variant(a, b, w, corners=True)),
        ("the weights divide instead of multiply (they scale small targets UP)",
         lambda a, b, w: variant(a, b, w, divide=True)),
        ("the two arguments swapped: encode_boxes(reference_boxes, proposals) encodes the reference against "
         "the proposal", lambda a, b, w: boxes.encode_boxes(b, a, w)),
    ]
    return check_forward("04.2", fn, lambda a, b, w: boxes.encode_boxes(a, b, w), probes, mistakes)


def _best_iou_ref(box, sizes, aspect_ratios, stride, grid_size):
    cell = anchors.generate_anchors(sizes, aspect_ratios, dtype=np.float64)
    grid = anchors.grid_anchors(cell, grid_size, (stride, stride))
    return float(boxes.box_iou(np.asarray(box, np.float64)[None], grid).max())


@exercise("04.3", "best_anchor_iou",
          "the best IoU between a box and all anchors of one level (sizes, aspect_ratios h/w, stride, grid_size)")
def check_best_anchor_iou(fn):
    probes = [([30.0, 40.0, 110.0, 80.0], (64,), (0.5, 1.0, 2.0), 16, (8, 10)),
              ([30.0, 40.0, 110.0, 80.0], (64,), (0.25, 4.0), 16, (8, 10)),
              ([50.0, 12.0, 75.0, 100.0], (45, 90), (0.3, 1.0, 3.0), 8, (16, 16)),
              ([5.0, 5.0, 37.0, 21.0], (32,), (0.5,), 8, (6, 6))]

    def variant(box, sizes, ratios, stride, grid, invert=False, centre=False, unrounded=False):
        s, r = np.asarray(sizes, np.float64), np.asarray(ratios, np.float64)
        if invert:
            r = 1 / r
        hs = (np.sqrt(r)[:, None] * s[None]).reshape(-1)
        ws = ((1 / np.sqrt(r))[:, None] * s[None]).reshape(-1)
        cell = np.stack([-ws, -hs, ws, hs], axis=1) / 2
        if not unrounded:
            cell = np.round(cell)
        g = anchors.grid_anchors(cell, grid, (stride, stride))
        if centre:
            g = g + stride / 2
        return float(boxes.box_iou(np.asarray(box, np.float64)[None], g).max())

    mistakes = [
        ("the aspect ratio inverted: torchvision's ratio is height / width (h = s sqrt(r), w = s / sqrt(r))",
         lambda *a: variant(*a, invert=True)),
        ("anchor centres half a stride off: torchvision centres them on (x * stride, y * stride), not on "
         "(x + 0.5) * stride", lambda *a: variant(*a, centre=True)),
        ("the anchors not rounded to whole pixels (torchvision rounds the cell anchors)",
         lambda *a: variant(*a, unrounded=True)),
    ]
    return check_forward("04.3", fn, _best_iou_ref, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 05
# ------------------------------------------------------------------------------------------------


def _labels_ref(iou, fg_iou_thresh, bg_iou_thresh):
    m = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)(iou)
    labels = (m >= 0).astype(np.float64)
    labels[m == Matcher.BETWEEN_THRESHOLDS] = -1.0
    return labels


@exercise("05.1", "anchor_labels",
          "RPN labels (R,) from the IoU matrix (G, R): 1 positive, 0 negative, -1 ignored, with low-quality matches")
def check_anchor_labels(fn):
    iou1 = np.array([[0.80, 0.70, 0.50, 0.30, 0.10, 0.00, 0.69],
                     [0.10, 0.20, 0.45, 0.29, 0.45, 0.05, 0.00]])
    iou2 = np.array([[0.20, 0.35, 0.35, 0.10, 0.00, 0.72]])
    iou3 = np.random.default_rng(72).uniform(0, 0.9, (3, 12)).round(2)
    probes = [(iou1, 0.7, 0.3), (iou2, 0.7, 0.3), (iou3, 0.7, 0.3), (iou3, 0.5, 0.4)]

    def no_low(iou, hi, lo):
        v = iou.max(axis=0)
        return np.where(v >= hi, 1.0, np.where(v < lo, 0.0, -1.0))

    def strict(iou, hi, lo):
        v = iou.max(axis=0)
        lab = np.where(v > hi, 1.0, np.where(v <= lo, 0.0, -1.0))
        best = iou.max(axis=1, keepdims=True)
        lab[((iou == best) & (best > 0)).any(axis=0)] = 1.0
        return lab

    def first_only(iou, hi, lo):
        v = iou.max(axis=0)
        lab = np.where(v >= hi, 1.0, np.where(v < lo, 0.0, -1.0))
        lab[iou.argmax(axis=1)] = 1.0
        return lab

    mistakes = [
        ("low-quality matches left out: every ground truth also keeps the anchor(s) it overlaps most, however "
         "low the IoU", no_low),
        ("the thresholds compared the wrong way round: IoU >= fg is positive, IoU < bg is negative", strict),
        ("only the first best anchor rescued per ground truth: every tied anchor is kept (argmax drops ties)",
         first_only),
    ]
    return check_forward("05.1", fn, _labels_ref, probes, mistakes)


def _box_loss_ref(pred, target, labels, beta):
    per = losses.smooth_l1_loss_forward(pred, target, beta=beta, reduction="none")[0]   # (S, 4)
    return float(per[labels == 1].sum() / max(labels.shape[0], 1))


@exercise("05.2", "rpn_box_loss",
          "the RPN box loss from the sampled anchors: pred and target deltas (S, 4), labels (S,) in {1, 0}, beta")
def check_rpn_box_loss(fn):
    r = np.random.default_rng(73)
    probes = []
    for S, P, beta in ((16, 5, 1 / 9), (10, 3, 1.0), (12, 12, 0.5)):
        labels = np.zeros(S)
        labels[r.choice(S, P, replace=False)] = 1
        probes.append((r.normal(0, 0.5, (S, 4)), r.normal(0, 0.5, (S, 4)), labels, beta))

    def per(p, t, beta):
        return losses.smooth_l1_loss_forward(p, t, beta=beta, reduction="none")[0]

    mistakes = [
        ("divided by the number of POSITIVE anchors; torchvision and Detectron2 divide by all sampled anchors",
         lambda p, t, lab, b: float(per(p, t, b)[lab == 1].sum() / max((lab == 1).sum(), 1))),
        ("the negatives regressed too: only positive anchors have a box to move to",
         lambda p, t, lab, b: float(per(p, t, b).sum() / len(lab))),
        ("a mean over the 4 coordinates as well (divide by the number sampled only)",
         lambda p, t, lab, b: float(per(p, t, b)[lab == 1].sum() / (4 * len(lab)))),
    ]
    return check_forward("05.2", fn, _box_loss_ref, probes, mistakes)


def _counts_ref(num_pos, num_neg, batch_size_per_image, positive_fraction):
    n_pos = min(num_pos, int(batch_size_per_image * positive_fraction))
    return n_pos, min(num_neg, batch_size_per_image - n_pos)


@exercise("05.3", "sample_counts",
          "how many positives and negatives the sampler takes (available counts, batch size per image, fraction)")
def check_sample_counts(fn):
    probes = [(300, 20000, 256, 0.5), (17, 20000, 256, 0.5), (17, 100, 256, 0.5), (0, 5000, 512, 0.25),
              (90, 40, 128, 0.25)]
    mistakes = [
        ("the negatives not topped up: when positives run short, negatives fill the rest of the batch",
         lambda p, n, b, f: (min(p, int(b * f)), min(n, b - int(b * f)))),
        ("the positives not capped at batch_size_per_image * positive_fraction",
         lambda p, n, b, f: (min(p, b), min(n, b - min(p, b)))),
    ]
    return check_forward("05.3", fn, _counts_ref, probes, mistakes)
