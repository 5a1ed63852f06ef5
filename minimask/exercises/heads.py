"""Exercises of chapters 09-11: the box head's per-class gather and loss, softmax cross-entropy's
backward, the mask head's per-class gather and loss, pasting, and the input transform and pooler.

Chapters: nbs/09_box_head.ipynb, nbs/10_mask_head.ipynb, nbs/11_mask_rcnn.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from .. import losses
from ..box_head import fastrcnn_loss
from ..config import TransformConfig
from ..mask_head import expand_boxes, maskrcnn_loss
from ..poolers import map_levels
from ..tape import Tensor
from ..transform import GeneralizedRCNNTransform, resized_size
from ._core import check_backward, check_forward, exercise

# ------------------------------------------------------------------------------------------------
# chapter 09
# ------------------------------------------------------------------------------------------------


def _head_probe(seed, R, K, P):
    r = np.random.default_rng(seed)
    labels = np.zeros(R, dtype=np.int64)
    labels[r.choice(R, P, replace=False)] = r.integers(1, K, P)
    return r.normal(0, 0.5, (R, 4 * K)), labels, r.normal(0, 0.5, (R, 4))


@exercise("09.1", "deltas_for_class",
          "pick each RoI's own class's 4 deltas: box_regression (R, 4K), labels (R,) -> (R, 4)")
def check_deltas_for_class(fn):
    probes = [_head_probe(s, R, K, P)[:2] for s, R, K, P in ((90, 8, 4, 5), (91, 6, 3, 6))]
    mistakes = [
        ("an off-by-one class: background is class 0 and owns columns 0..3, so class k is columns 4k..4k+3",
         lambda b, lab: b.reshape(len(lab), -1, 4)[np.arange(len(lab)), np.maximum(lab - 1, 0)]),
        ("a transposed layout: the 4K columns are class-major, reshape (R, K, 4), not (R, 4, K)",
         lambda b, lab: b.reshape(len(lab), 4, -1)[np.arange(len(lab)), :, lab]),
    ]
    return check_forward("09.1", fn, lambda b, lab: b.reshape(len(lab), -1, 4)[np.arange(len(lab)), lab],
                         probes, mistakes)


def _box_loss_ref(box_regression, labels, targets, beta):
    R, K4 = box_regression.shape
    _, loss = fastrcnn_loss(Tensor(np.zeros((R, K4 // 4))), Tensor(box_regression), [labels], [targets], beta=beta)
    return float(loss.data)


@exercise("09.2", "fastrcnn_box_loss",
          "the box head's regression loss: box_regression (R, 4K), labels (R,), regression_targets (R, 4), beta")
def check_fastrcnn_box_loss(fn):
    probes = [(*_head_probe(s, R, K, P), beta) for s, R, K, P, beta in ((92, 10, 4, 4, 1 / 9), (93, 8, 3, 8, 1.0))]

    def own(b, lab):
        return b.reshape(len(lab), -1, 4)[np.arange(len(lab)), lab]

    def sl1(d, t, beta):
        return losses.smooth_l1_loss_forward(d, t, beta=beta, reduction="none")[0]

    mistakes = [
        ("divided by the number of positive RoIs; torchvision divides by all sampled RoIs",
         lambda b, lab, t, beta: float(sl1(own(b, lab), t, beta)[lab > 0].sum() / max((lab > 0).sum(), 1))),
        ("background RoIs regressed too: label 0 has no box to move to",
         lambda b, lab, t, beta: float(sl1(own(b, lab), t, beta).sum() / len(lab))),
        ("every class's deltas regressed: only the RoI's own class's 4 deltas enter the loss",
         lambda b, lab, t, beta: float(sum(sl1(b.reshape(len(lab), -1, 4)[:, k], t, beta)[lab > 0].sum()
                                           for k in range(b.shape[1] // 4)) / len(lab))),
    ]
    return check_forward("09.2", fn, _box_loss_ref, probes, mistakes)


def ce_forward(logits, labels):
    """Mean softmax cross-entropy of logits (N, K) with int labels (N,). Cache: (logits, labels)."""
    out, _ = losses.cross_entropy_forward(logits, labels)
    return out, (logits, labels)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _onehot(labels, K):
    return np.eye(K)[labels]


@exercise("09.3", "cross_entropy_backward",
          "mean softmax cross-entropy, backward: from dout (a scalar) and cache (logits, labels) return dlogits")
def check_cross_entropy_backward(fn):
    probes = [([np.random.default_rng(s).normal(0, 2, (N, K)), np.random.default_rng(s + 1).integers(0, K, N)], {})
              for s, N, K in ((94, 6, 4), (96, 5, 3))]

    def base(c):
        z, lab = c
        return _softmax(z) - _onehot(lab, z.shape[1])

    mistakes = [
        ("a sign error: d loss / d logits = softmax - onehot", lambda g, c: -g * base(c) / len(c[1])),
        ("the 1/N of the mean missing", lambda g, c: g * base(c)),
        ("an off-by-one class: the one-hot sits at column labels[i]",
         lambda g, c: g * (_softmax(c[0]) - _onehot((c[1] - 1) % c[0].shape[1], c[0].shape[1])) / len(c[1])),
    ]
    return check_backward("09.3", fn, ce_forward, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 10
# ------------------------------------------------------------------------------------------------


def _mask_probe(seed, P, K, M):
    r = np.random.default_rng(seed)
    return r.normal(0, 2, (P, K, M, M)), r.integers(1, K, P), (r.uniform(0, 1, (P, M, M)) > 0.5).astype(np.float64)


@exercise("10.1", "mask_logits_for_class",
          "the per-class gather of the mask loss: mask_logits (P, K, M, M), labels (P,) -> (P, M, M)")
def check_mask_gather(fn):
    probes = [_mask_probe(s, 4, 4, 5)[:2] for s in (100, 101)]      # P == K: a transposed index still runs
    mistakes = [
        ("an off-by-one class: channel k holds class k, background (0) included",
         lambda m, lab: m[np.arange(len(lab)), lab - 1]),
        ("a transposed index: mask_logits[labels, arange(P)] swaps the RoI and class axes",
         lambda m, lab: m[lab, np.arange(len(lab))]),
    ]
    return check_forward("10.1", fn, lambda m, lab: m[np.arange(len(lab)), lab], probes, mistakes)


def _mask_loss_ref(mask_logits, labels, mask_targets):
    return float(maskrcnn_loss(Tensor(mask_logits), labels, mask_targets).data)


@exercise("10.2", "mask_loss",
          "Mask R-CNN's mask loss: mask_logits (P, K, M, M), labels (P,), mask_targets (P, M, M) -> a number")
def check_mask_loss(fn):
    probes = [_mask_probe(s, P, K, M) for s, P, K, M in ((102, 3, 4, 6), (103, 5, 3, 4))]

    def bce(x, t):
        return losses.binary_cross_entropy_with_logits_forward(x, t, reduction="none")[0]

    def softmax_loss(m, lab, t):
        z = m - m.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        picked = logp[np.arange(len(lab)), lab]
        return float(-(t * picked).mean())

    mistakes = [
        ("a softmax over the classes: Mask R-CNN's mask loss is a per-class sigmoid, the classes do not compete",
         softmax_loss),
        ("every class's mask scored against the target: only the gt class's channel enters the loss",
         lambda m, lab, t: float(bce(m, np.broadcast_to(t[:, None], m.shape)).mean())),
        ("a sum instead of the mean over P * M * M pixels",
         lambda m, lab, t: float(bce(m[np.arange(len(lab)), lab], t).sum())),
    ]
    return check_forward("10.2", fn, _mask_loss_ref, probes, mistakes)


def _paste_ref(box, M, padding):
    return tuple(int(v) for v in expand_boxes(np.asarray([box], np.float64), (M + 2 * padding) / M)[0])


@exercise("10.3", "paste_box",
          "the integer pixel box (x1, y1, x2, y2) a padded M x M mask is pasted into, as paste_masks_in_image")
def check_paste_box(fn):
    probes = [((10.3, 20.6, 50.2, 41.9), 28, 1), ((0.4, 3.7, 13.8, 9.6), 28, 1), ((100.0, 50.0, 164.0, 82.0), 14, 1),
              ((7.7, 7.7, 37.2, 26.1), 28, 2)]

    def grown(box, M, p, around_corner=False):
        b = np.asarray(box, np.float64)
        s = (M + 2 * p) / M
        if around_corner:
            return np.array([b[0], b[1], b[0] + (b[2] - b[0]) * s, b[1] + (b[3] - b[1]) * s])
        c, h = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) / 2 * s
        return np.concatenate([c - h, c + h])

    mistakes = [
        ("rounded to the nearest pixel: paste_masks_in_image truncates the grown box (int())",
         lambda b, M, p: tuple(int(v) for v in np.round(grown(b, M, p)))),
        ("the box not grown: the padded (M + 2 padding) map covers a box (M + 2 padding) / M times larger",
         lambda b, M, p: tuple(int(v) for v in b)),
        ("grown about its top-left corner: the box grows about its centre",
         lambda b, M, p: tuple(int(v) for v in grown(b, M, p, around_corner=True))),
    ]
    return check_forward("10.3", fn, _paste_ref, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 11
# ------------------------------------------------------------------------------------------------


@exercise("11.1", "resized_size",
          "the transform's output size (new_h, new_w) for an image (h, w), min_size and max_size")
def check_resized_size(fn):
    probes = [(480, 640, 800, 1333), (375, 500, 800, 1333), (300, 1200, 800, 1333), (427, 640, 256, 320),
              (640, 481, 800, 1000)]

    def variant(h, w, mn, mx, cap=True, rnd=False):
        s = mn / min(h, w)
        if cap:
            s = min(s, mx / max(h, w))
        f = round if rnd else math.floor
        return f(h * s), f(w * s)

    mistakes = [
        ("max_size ignored: the scale is reduced so that the long side stays <= max_size",
         lambda *a: variant(*a, cap=False)),
        ("rounded instead of floored (torchvision floors side * scale)", lambda *a: variant(*a, rnd=True)),
        ("height and width swapped", lambda h, w, mn, mx: resized_size(h, w, mn, mx)[0][::-1]),
    ]
    return check_forward("11.1", fn, lambda *a: resized_size(*a)[0], probes, mistakes)


@exercise("11.2", "fpn_level",
          "the FPN level (2..5) RoIAlign reads for each box (K, 4): floor(4 + log2(sqrt(area) / 224)), clamped")
def check_fpn_level(fn):
    r = np.random.default_rng(110)
    xy, wh = r.uniform(0, 100, (30, 2)), np.exp(r.uniform(np.log(4), np.log(900), (30, 2)))
    b1 = np.concatenate([xy, xy + wh], axis=1)
    b2 = np.array([[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10], [0, 0, 2000, 1000]])

    def variant(b, clamp=True, ln=False, k0=4):
        s = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        k = np.floor(k0 + (np.log(s / 224) if ln else np.log2(s / 224)) + 1e-6)
        return (np.clip(k, 2, 5) if clamp else k).astype(np.int64)

    mistakes = [
        ("the level not clamped to [2, 5]: tiny boxes read P2, huge ones P5", lambda b: variant(b, clamp=False)),
        ("a natural log: one level per doubling of the box side is log2", lambda b: variant(b, ln=True)),
        ("an off-by-one canonical level: a 224 x 224 box (ImageNet-sized) reads level 4", lambda b: variant(b, k0=5)),
    ]
    return check_forward("11.2", fn, map_levels, [(b1,), (b2,)], mistakes)


def _batch_ref(images):
    return GeneralizedRCNNTransform(TransformConfig()).batch_images(images)


@exercise("11.3", "batch_images",
          "zero-pad a list of (3, h, w) images into one (N, 3, H, W) batch, H and W multiples of 32")
def check_batch_images(fn):
    r = np.random.default_rng(111)
    probes = [([r.normal(size=(3, 50, 70)), r.normal(size=(3, 64, 33))],), ([r.normal(size=(3, 96, 128))],)]

    def no_round(images):
        H, W = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
        out = np.zeros((len(images), 3, H, W))
        for k, im in enumerate(images):
            out[k, :, :im.shape[1], :im.shape[2]] = im
        return out

    def centred(images):
        out = _batch_ref(images) * 0
        for k, im in enumerate(images):
            y0, x0 = (out.shape[2] - im.shape[1]) // 2, (out.shape[3] - im.shape[2]) // 2
            out[k, :, y0:y0 + im.shape[1], x0:x0 + im.shape[2]] = im
        return out

    mistakes = [
        ("padded to the largest image but not up to a multiple of 32 (C5 has stride 32)", no_round),
        ("the images centred: padding goes at the bottom and right, so box coordinates stay valid", centred),
    ]
    return check_forward("11.3", fn, _batch_ref, probes, mistakes)
