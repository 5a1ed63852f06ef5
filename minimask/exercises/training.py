"""Exercises of chapters 12-13: the learning-rate schedule, an SGD step, gradient clipping, COCO's
box format, mask IoU with crowds, and AP from a precision-recall table by hand.

Chapters: nbs/12_training_on_shapes.ipynb, nbs/13_coco_data_and_evaluation.ipynb
"""

from __future__ import annotations

import bisect

import numpy as np
from pycocotools import mask as mask_utils

from .. import optim
from ..module import Parameter
from ._core import check_forward, exercise

# ------------------------------------------------------------------------------------------------
# chapter 12
# ------------------------------------------------------------------------------------------------

_SCHEDULE = dict(base_lr=0.02, milestones=(60000, 80000), gamma=0.1, warmup_iters=1000, warmup_factor=1e-3)


@exercise("12.1", "lr_at",
          "the learning rate at an iteration: linear warmup, then x gamma at each milestone reached")
def check_lr_at(fn):
    s = _SCHEDULE
    args = (s["base_lr"], s["milestones"], s["gamma"], s["warmup_iters"], s["warmup_factor"])
    probes = [(it, *args) for it in (0, 1, 500, 999, 1000, 59999, 60000, 70000, 80000, 89999)]
    probes.append((150, 0.01, (100, 200), 0.5, 300, 0.1))

    def variant(it, lr, ms, g, wi, wf, late=False, once=False, constant=False):
        f = 1.0
        if it < wi:
            a = it / wi
            f = wf if constant else wf * (1 - a) + a
        n = bisect.bisect_left(list(ms), it) if late else bisect.bisect_right(list(ms), it)
        return lr * f * (g if once and n else g ** n)

    mistakes = [
        ("a milestone applied one iteration late: the drop happens AT the milestone (count milestones <= it)",
         lambda *a: variant(*a, late=True)),
        ("gamma applied once whatever the number of milestones passed (it is gamma ** count)",
         lambda *a: variant(*a, once=True)),
        ("a constant warmup: the factor rises linearly from warmup_factor to 1",
         lambda *a: variant(*a, constant=True)),
    ]
    return check_forward("12.1", fn, optim.lr_at, probes, mistakes, rtol=1e-9, atol=1e-15)


def _sgd_ref(param, grad, buf, lr, momentum, weight_decay):
    p = Parameter(np.array(param, dtype=np.float64, copy=True))
    p.grad = np.array(grad, dtype=np.float64, copy=True)
    opt = optim.SGD([p], lr=lr, momentum=momentum, weight_decay=weight_decay)
    if buf is not None:
        opt.state[id(p)] = np.array(buf, dtype=np.float64, copy=True)
    opt.step()
    return p.data, opt.state[id(p)]


@exercise("12.2", "sgd_step",
          "one SGD step with momentum and weight decay, as torch: (param, grad, buf or None, lr, momentum, wd) "
          "-> (new param, new buf)")
def check_sgd_step(fn):
    r = np.random.default_rng(120)
    probes = [(r.normal(size=5), r.normal(size=5), None, 0.1, 0.9, 1e-2),
              (r.normal(size=(2, 3)), r.normal(size=(2, 3)), r.normal(size=(2, 3)), 0.05, 0.9, 1e-1),
              (r.normal(size=4), r.normal(size=4), r.normal(size=4), 0.2, 0.5, 0.0)]

    def variant(p, g, buf, lr, m, wd, wd_after=False, damp=False, grad_step=False):
        d = g if wd_after else g + wd * p
        b = d if buf is None else m * buf + ((1 - m) * d if damp else d)
        step = b + wd * p if wd_after else b
        return p - lr * (d if grad_step else step), b

    mistakes = [
        ("weight decay added after the momentum: it goes into the gradient first (d = grad + wd * p)",
         lambda *a: variant(*a, wd_after=True)),
        ("dampening (1 - momentum) applied to the gradient: torch's SGD default is dampening = 0",
         lambda *a: variant(*a, damp=True)),
        ("the step along the gradient instead of the momentum buffer", lambda *a: variant(*a, grad_step=True)),
    ]
    return check_forward("12.2", fn, _sgd_ref, probes, mistakes)


def _clip_ref(grads, max_norm):
    params = []
    for g in grads:
        p = Parameter(np.zeros_like(g))
        p.grad = np.array(g, dtype=np.float64, copy=True)
        params.append(p)
    total = optim.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total)


@exercise("12.3", "clip_grad_norm",
          "clip a list of gradients to a global L2 norm: -> (clipped list, total norm before clipping)")
def check_clip_grad_norm(fn):
    r = np.random.default_rng(121)
    probes = [([r.normal(size=(3, 4)), r.normal(size=5), 10 * r.normal(size=2)], 5.0),
              ([r.normal(size=3), r.normal(size=(2, 2))], 100.0),
              ([0.1 * r.normal(size=6), 3 * r.normal(size=3)], 1.0)]

    def per_param(grads, mx):
        total = float(np.sqrt(sum((g * g).sum() for g in grads)))
        return [g * min(1.0, mx / (np.sqrt((g * g).sum()) + 1e-6)) for g in grads], total

    def always(grads, mx):
        total = float(np.sqrt(sum((g * g).sum() for g in grads)))
        return [g * mx / (total + 1e-6) for g in grads], total

    mistakes = [
        ("each gradient clipped by its own norm: the norm is global, over all parameters together", per_param),
        ("gradients rescaled even under max_norm: the factor is min(1, max_norm / total)", always),
    ]
    return check_forward("12.3", fn, _clip_ref, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 13
# ------------------------------------------------------------------------------------------------


@exercise("13.1", "xywh_to_xyxy", "COCO's boxes (N, 4) as x, y, width, height -> x1, y1, x2, y2")
def check_xywh_to_xyxy(fn):
    r = np.random.default_rng(130)
    probes = [(np.concatenate([r.uniform(0, 100, (6, 2)), r.uniform(1, 50, (6, 2))], axis=1),)]
    mistakes = [
        ("width and height read as x2, y2: a COCO box is (x, y, width, height)", lambda b: b.copy()),
        ("x, y taken as the centre: in COCO they are the top-left corner",
         lambda b: np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)),
        ("a transposed index: x1 y1 x2 y2 order (width goes with x)",
         lambda b: np.concatenate([b[:, :2], b[:, :2] + b[:, 2:][:, ::-1]], axis=1)),
    ]
    return check_forward("13.1", fn, lambda b: np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1),
                         probes, mistakes)


def _mask_iou_ref(dt, gt, iscrowd):
    enc = lambda m: mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    return np.asarray(mask_utils.iou(enc(dt), enc(gt), [int(c) for c in iscrowd]), dtype=np.float64).reshape(
        len(dt), len(gt))


@exercise("13.2", "mask_iou",
          "COCO's mask IoU: detections (D, H, W), ground truths (G, H, W) binary, iscrowd (G,) -> (D, G)")
def check_mask_iou(fn):
    def blobs(n, seed):
        rr = np.random.default_rng(seed)
        m = np.zeros((n, 20, 24), np.uint8)
        for k in range(n):
            y, x = rr.integers(0, 12), rr.integers(0, 14)
            m[k, y:y + rr.integers(4, 9), x:x + rr.integers(4, 11)] = 1
        return m

    probes = [(blobs(3, 1), blobs(4, 2), np.array([0, 1, 0, 1])), (blobs(2, 3), blobs(2, 4), np.array([0, 0]))]

    def plain(dt, gt, crowd):
        inter = np.einsum("dhw,ghw->dg", dt.astype(float), gt.astype(float))
        union = dt.reshape(len(dt), -1).sum(1)[:, None] + gt.reshape(len(gt), -1).sum(1)[None] - inter
        return inter / union

    def inter_over_sum(dt, gt):
        inter = np.einsum("dhw,ghw->dg", dt.astype(float), gt.astype(float))
        return inter / (dt.reshape(len(dt), -1).sum(1)[:, None] + gt.reshape(len(gt), -1).sum(1)[None])

    mistakes = [
        ("crowd regions treated as ordinary ground truth: for iscrowd = 1 COCO divides the intersection by "
         "the detection's area only", plain),
        ("the union counted the intersection twice: union = area(dt) + area(gt) - intersection",
         lambda dt, gt, c: np.where(np.asarray(c)[None] == 1, _mask_iou_ref(dt, gt, c), inter_over_sum(dt, gt))),
    ]
    return check_forward("13.2", fn, _mask_iou_ref, probes, mistakes)


def _coco_ap_ref(recall, precision):
    """COCOeval.accumulate's AP for one category and area: 101-point interpolated precision."""
    q = np.array(precision, dtype=np.float64)
    for i in range(len(q) - 1, 0, -1):          # the envelope: best precision at this recall or beyond
        q[i - 1] = max(q[i - 1], q[i])
    rec_thrs = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, rec_thrs, side="left")
    vals = np.array([q[i] if i < len(q) else 0.0 for i in idx])
    return float(vals.mean())


@exercise("13.3", "coco_ap",
          "AP from a precision-recall table (detections by decreasing score) by COCO's 101-point interpolation")
def check_coco_ap(fn):
    # tables as COCOeval builds them: recall = TP cumsum / #gt, precision = TP cumsum / (TP + FP cumsum)
    def table(hits, n_gt):
        tp = np.cumsum(hits)
        fp = np.cumsum(1 - np.asarray(hits))
        return tp / n_gt, tp / (tp + fp)

    probes = [table([1, 1, 0, 1, 0, 0, 1, 1, 0, 1], 8), table([0, 1, 1, 1, 0, 1], 5), table([1, 0, 0, 0, 1], 2),
              table([1, 1, 1], 3)]

    def raw(recall, precision):
        idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))

    def voc11(recall, precision):
        q = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
        idx = np.searchsorted(recall, np.linspace(0, 1, 11), side="left")
        return float(np.mean([q[i] if i < len(q) else 0.0 for i in idx]))

    def area(recall, precision):
        q = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
        r = np.concatenate([[0.0], recall])
        return float(np.sum((r[1:] - r[:-1]) * q))

    mistakes = [
        ("precision not made monotone: COCO takes, at each recall, the best precision at that recall or beyond",
         raw),
        ("11 recall points (PASCAL VOC 2007): COCO samples 101, recall 0, 0.01, ..., 1", voc11),
        ("the area under the step curve: COCO averages the interpolated precision at 101 fixed recalls", area),
    ]
    return check_forward("13.3", fn, _coco_ap_ref, probes, mistakes)
