"""The chapters' exercise checkers: every reference solution passes, a stub is "not attempted", and a
plausible wrong answer (a student's code with one typical bug: a sign error, a missing half-pixel
offset, an off-by-one, a transposed index — never zeros) is rejected with that mistake named.

The wrong answers below are written as a student would write them, independently of the checkers'
own lists of mistakes, so a checker that stopped recognising one fails here.
"""

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from minimask import exercises
from minimask.exercises import CORRECT, NOT_ATTEMPTED, WRONG

NBS = Path(__file__).resolve().parent.parent / "nbs"
sys.path.insert(0, str(NBS))

IDS = sorted(exercises.REGISTRY)
CHAPTERS = sorted(int(p.name[:2]) for p in NBS.glob("[0-9][0-9]_*.ipynb"))   # every chapter, 00 to the last


def solution(ex_id):
    e = exercises.REGISTRY[ex_id]
    return getattr(importlib.import_module(f"solutions.ch{e.chapter:02d}"), e.name)


def test_two_to_four_exercises_in_every_chapter():
    assert CHAPTERS[:17] == list(range(17)), CHAPTERS              # chapters 00-16, none missing
    counts = {c: len(exercises.for_chapter(c)) for c in CHAPTERS}
    assert all(2 <= n <= 4 for n in counts.values()), counts
    assert {e.chapter for e in exercises.REGISTRY.values()} == set(CHAPTERS), "an exercise without its chapter"


@pytest.mark.parametrize("ex_id", IDS)
def test_solution_passes(ex_id):
    result = exercises.check(ex_id, solution(ex_id))
    assert result.status == CORRECT, result


@pytest.mark.parametrize("ex_id", IDS)
def test_stub_is_not_attempted(ex_id):
    def stub(*args, **kwargs):
        raise NotImplementedError

    result = exercises.check(ex_id, stub)
    assert result.status == NOT_ATTEMPTED and "NotImplementedError" in repr(result), result


def test_a_crash_is_reported_not_raised():
    result = exercises.check("04.1", lambda a, b: a @ b)          # (N, 4) @ (M, 4): a shape error
    assert result.status == WRONG and "raised ValueError" in result.message


def test_unknown_exercise():
    with pytest.raises(KeyError, match="known"):
        exercises.check("99.9", print)


# ------------------------------------------------------------------------------------------------
# wrong answers, one per exercise, each with the words its verdict must contain
# ------------------------------------------------------------------------------------------------

def _sig(x):
    return 1 / (1 + np.exp(-x))


def w00_1(dout, s):
    return -dout * s * (1 - s)                                     # sign error


def w00_2(target, idx, values):
    out = np.array(target, dtype=float)
    out[idx] += values                                             # repeated indices count once
    return out


def w00_3(dout, cache):
    a, b = cache
    return dout * b, dout * a                                      # db not reduced over rows


def w01_1(size, k, stride=1, padding=0, dilation=1):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride  # the + 1 forgotten


def w01_2(x, w, stride, padding):
    from minimask import conv
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    cols = conv.im2col(x, (kh, kw), stride=stride, padding=padding)
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    return (w[:, :, ::-1, ::-1].reshape(O, -1) @ cols).reshape(N, O, Ho, Wo)   # flipped kernel


def w01_3(x, dout, w_shape, stride, padding):
    from minimask import conv
    O = w_shape[0]
    cols = conv.im2col(x[:1], w_shape[2:], stride=stride, padding=padding)[0]
    return (dout[0].reshape(O, -1) @ cols.T).reshape(w_shape)     # only image 0


def w02_1(dout, cache):
    d, beta = cache
    g = dout * np.where(np.abs(d) < beta, d / beta, np.sign(d))
    return g, g                                                    # sign error on the target


def w02_2(x, G, eps=1e-5):
    N, C = x.shape[:2]
    xg = x.reshape(N, C // G, G, -1).transpose(0, 2, 1, 3).reshape(N, G, -1)   # transposed grouping
    y = (xg - xg.mean(2, keepdims=True)) / np.sqrt(xg.var(2, keepdims=True) + eps)
    return y.reshape(N, G, C // G, -1).transpose(0, 2, 1, 3).reshape(x.shape)


def w02_3(dout, cache):
    x, t = cache
    return dout * (t - _sig(x)), -dout * x                         # sign error


def w03_1(h, w):
    H, W = 32 * math.ceil(h / 32), 32 * math.ceil(w / 32)
    lv = [(H // 2 ** k, W // 2 ** k) for k in range(2, 6)]
    return (H, W), lv + [(lv[-1][0] // 2, lv[-1][1] // 2)]        # P6 floored


def w03_2(layers):
    return 1 + sum(k - 1 for k, _ in layers)                      # strides ignored


def w03_3(inplanes, planes, stride, norm):
    n = inplanes * planes + 9 * planes * planes + 4 * planes * planes   # downsample forgotten
    return n + (2 * 6 * planes if norm == "group_norm" else 0)


def w04_1(a, b):
    aw, ah = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1          # +1 pixel convention
    bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    iw = np.clip(np.minimum(a[:, None, 2], b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1]) + 1, 0, None)
    return iw * ih / ((aw * ah)[:, None] + bw * bh - iw * ih)


def w04_2(ref, prop, weights):
    wx, wy, ww, wh = weights
    pw, ph = prop[:, 2] - prop[:, 0], prop[:, 3] - prop[:, 1]
    gw, gh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    px, py, gx, gy = prop[:, 0] + pw / 2, prop[:, 1] + ph / 2, ref[:, 0] + gw / 2, ref[:, 1] + gh / 2
    return np.stack([wx * (gx - px) / pw, wy * (gy - py) / ph, ww * np.log(pw / gw), wh * np.log(ph / gh)], 1)


def w04_3(box, sizes, ratios, stride, grid_size):
    from minimask.boxes import box_iou
    r, s = np.asarray(ratios, float), np.asarray(sizes, float)
    ws = (np.sqrt(r)[:, None] * s).ravel()                         # ratio taken as w / h
    hs = ((1 / np.sqrt(r))[:, None] * s).ravel()
    cell = np.round(np.stack([-ws, -hs, ws, hs], 1) / 2)
    ys, xs = np.meshgrid(np.arange(grid_size[0]) * stride, np.arange(grid_size[1]) * stride, indexing="ij")
    grid = (np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4) + cell).reshape(-1, 4)
    return float(box_iou(np.asarray(box, float)[None], grid).max())


def w05_1(iou, fg, bg):
    best = iou.max(0)                                              # no low-quality matches
    return np.where(best >= fg, 1.0, np.where(best < bg, 0.0, -1.0))


def w05_2(pred, target, labels, beta):
    d = (pred - target)[labels == 1]
    per = np.where(np.abs(d) < beta, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta)
    return float(per.sum() / max((labels == 1).sum(), 1))        # / positives


def w05_3(num_pos, num_neg, batch, fraction):
    n_pos = min(num_pos, int(batch * fraction))
    return n_pos, min(num_neg, int(batch * (1 - fraction)))       # negatives not topped up


def w06_1(boxes, scores, t):
    from minimask.boxes import box_iou
    iou = box_iou(boxes, boxes)
    alive, keep = np.ones(len(scores), bool), []
    for i in range(len(scores)):                                   # input order, not by score
        if alive[i]:
            keep.append(i)
            alive[i + 1:] &= iou[i, i + 1:] <= t
    return np.array(keep)


def w06_2(boxes, scores, labels, t):
    from minimask import nms
    return nms(boxes, scores, t)                                   # classes ignored


def w07_1(box):
    x1, y1, x2, y2 = (v - 0.5 for v in box)                        # half-pixel offset: aligned=True
    cy = y1 + (np.arange(2) + 0.5) * (y2 - y1) / 2
    cx = x1 + (np.arange(2) + 0.5) * (x2 - x1) / 2
    return 5 * cy[:, None] + cx[None, :]


def w07_2(x1, x2, pooled, grid, aligned, scale):
    start = x1 * scale                                             # half-pixel offset missing
    roi = (x2 - x1) * scale
    roi = roi if aligned else max(roi, 1.0)
    b = roi / pooled
    return start + np.arange(pooled)[:, None] * b + (np.arange(grid)[None, :] + 0.5) * b / grid


def w07_3(feature, y, x):
    sys.path.insert(0, str(NBS))
    from solutions.ch07 import bilinear
    return bilinear(feature.T.copy(), y, x)                        # feature[x, y]: transposed index


def w08_1(index, K, C, PH, PW):
    ph = index % PH                                                # ph and pw swapped
    pw = (index // PH) % PW
    return index // (PH * PW * C), (index // (PH * PW)) % C, ph, pw


def w08_2(thread, n, threads, blocks):
    return np.arange(thread, n, threads)                           # stride blockDim only


def w08_3(iou, row, col_block, t):
    word = 0
    for j in range(64):
        col = col_block * 64 + j
        if col < iou.shape[1] and col > row and iou[row, col] >= t:   # >= instead of >
            word |= 1 << j
    return word


def w09_1(box_regression, labels):
    R = len(labels)
    return box_regression.reshape(R, 4, -1)[np.arange(R), :, labels]   # (R, 4, K): transposed layout


def w09_2(box_regression, labels, targets, beta):
    R = len(labels)
    d = box_regression.reshape(R, -1, 4)[np.arange(R), labels] - targets
    per = np.where(np.abs(d) < beta, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta)
    return float(per[labels > 0].sum() / max((labels > 0).sum(), 1))  # / positives


def w09_3(dout, cache):
    z, labels = cache
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return dout * p                                                # the 1/N missing


def w10_1(mask_logits, labels):
    return mask_logits[labels, np.arange(len(labels))]              # transposed index


def w10_2(mask_logits, labels, targets):
    z = mask_logits - mask_logits.max(1, keepdims=True)            # softmax over classes
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-(targets * logp[np.arange(len(labels)), labels]).mean())


def w10_3(box, M, padding):
    x1, y1, x2, y2 = box
    s = (M + 2 * padding) / M
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * s, (y2 - y1) / 2 * s
    return tuple(int(round(v)) for v in (cx - hw, cy - hh, cx + hw, cy + hh))   # rounded, not truncated


def w11_1(h, w, min_size, max_size):
    s = min_size / min(h, w)                                       # max_size ignored
    return math.floor(h * s), math.floor(w * s)


def w11_2(boxes):
    s = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return np.floor(4 + np.log2(s / 224) + 1e-6).astype(np.int64)  # not clamped


def w11_3(images):
    H, W = max(i.shape[1] for i in images), max(i.shape[2] for i in images)   # not a multiple of 32
    out = np.zeros((len(images), 3, H, W))
    for k, im in enumerate(images):
        out[k, :, :im.shape[1], :im.shape[2]] = im
    return out


def w12_1(it, base_lr, milestones, gamma, warmup_iters, warmup_factor):
    f = 1.0
    if it < warmup_iters:
        a = it / warmup_iters
        f = warmup_factor * (1 - a) + a
    return base_lr * f * gamma ** sum(1 for m in milestones if m < it)   # one iteration late


def w12_2(param, grad, buf, lr, momentum, wd):
    buf = grad.copy() if buf is None else momentum * buf + grad   # weight decay after the momentum
    return param - lr * (buf + wd * param), buf


def w12_3(grads, max_norm):
    total = float(np.sqrt(sum((g * g).sum() for g in grads)))
    return [g * min(1.0, max_norm / (np.sqrt((g * g).sum()) + 1e-6)) for g in grads], total   # per parameter


def w13_1(boxes):
    return np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)   # centre


def w13_2(dt, gt, iscrowd):
    d, g = dt.reshape(len(dt), -1).astype(float), gt.reshape(len(gt), -1).astype(float)
    inter = d @ g.T
    return inter / (d.sum(1)[:, None] + g.sum(1)[None] - inter)   # crowds ignored


def w13_3(recall, precision):
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")   # no envelope
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def w14_1(d):
    B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
    return B_T.T @ d @ B_T                                         # B d B^T: the transform transposed


def w14_2(x, w, padding):
    kh, kw = w.shape
    xpad = np.pad(x, padding)
    Hp, Wp = xpad.shape
    Ho = Hp - kh + 1
    flat = np.concatenate([xpad.ravel(), np.zeros(kw)])
    acc = sum(w[i, j] * flat[i * Wp + j:i * Wp + j + Ho * Wp] for i in range(kh) for j in range(kw))
    return acc.reshape(Ho, Wp)                                     # the Wp - Wout wrap-around columns kept

def w15_1(x1, x2, pooled, scale):
    a, b = round(x1 * scale), round(x2 * scale) + 1                # Python's round: half to even
    return a + (b - a) * np.arange(pooled + 1) / pooled


def w15_2(mask_logits, labels, mask_targets):
    z = mask_logits - mask_logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    own = logp[np.arange(len(labels)), labels]                      # (P, M, M): the RoI's class
    return float(-own[mask_targets >= 0.5].mean())                 # background pixels skipped


def w15_3(better, worse):
    d = np.mean(better) - np.mean(worse)
    sb, sw = np.std(better), np.std(worse)                         # std instead of the range
    if d > sb and d > sw:
        return "REPRODUCED"
    return "REVERSED" if -d > sb and -d > sw else "INCONCLUSIVE"


def w15_4(feature, box, p, q, pooled, grid, aggregation):
    from minimask.roi_align import bilinear_interpolate
    x1, y1, x2, y2 = box
    bh, bw = (y2 - y1) / pooled, (x2 - x1) / pooled
    ys = y1 - 0.5 + p * bh + (np.arange(grid) + 0.5) * bh / grid
    xs = x1 - 0.5 + q * bw + (np.arange(grid) + 0.5) * bw / grid
    return bilinear_interpolate(feature, ys[:, None], xs[None, :]).reshape(len(feature), -1).mean(1)   # always avg


def w16_1(items, rank, size):
    return list(items[rank::size])                                 # strided, not contiguous


def w16_2(means, counts):
    return float(np.mean(means))                                   # each rank weighted equally


def w16_3(nbytes, dtypes, cap):
    lengths, size = [], 0
    for n in nbytes:                                               # dtypes never looked at
        if not lengths or size + n > cap:
            lengths.append(0)
            size = 0
        lengths[-1] += 1
        size += n
    return lengths


WRONG_ANSWERS = {
    "00.1": (w00_1, "sign error"), "00.2": (w00_2, "repeated index"), "00.3": (w00_3, "not summed"),
    "01.1": (w01_1, "off-by-one"), "01.2": (w01_2, "flipped kernel"), "01.3": (w01_3, "first image"),
    "02.1": (w02_1, "sign error"), "02.2": (w02_2, "transposed grouping"), "02.3": (w02_3, "sign error"),
    "03.1": (w03_1, "P6"), "03.2": (w03_2, "strides ignored"), "03.3": (w03_3, "downsample"),
    "04.1": (w04_1, "+1 pixel"), "04.2": (w04_2, "sign error"), "04.3": (w04_3, "aspect ratio inverted"),
    "05.1": (w05_1, "low-quality"), "05.2": (w05_2, "POSITIVE"), "05.3": (w05_3, "topped up"),
    "06.1": (w06_1, "input order"), "06.2": (w06_2, "classes ignored"),
    "07.1": (w07_1, "half-pixel offset"), "07.2": (w07_2, "half-pixel offset"), "07.3": (w07_3, "transposed index"),
    "08.1": (w08_1, "transposed index"), "08.2": (w08_2, "blockDim.x only"), "08.3": (w08_3, "IoU >= threshold"),
    "09.1": (w09_1, "transposed layout"), "09.2": (w09_2, "positive RoIs"), "09.3": (w09_3, "1/N"),
    "10.1": (w10_1, "transposed index"), "10.2": (w10_2, "softmax"), "10.3": (w10_3, "truncates"),
    "11.1": (w11_1, "max_size ignored"), "11.2": (w11_2, "not clamped"), "11.3": (w11_3, "multiple of 32"),
    "12.1": (w12_1, "one iteration late"), "12.2": (w12_2, "weight decay added after"),
    "12.3": (w12_3, "its own norm"),
    "13.1": (w13_1, "centre"), "13.2": (w13_2, "crowd"), "13.3": (w13_3, "monotone"),
    "14.1": (w14_1, "transposed"), "14.2": (w14_2, "wrap-around columns kept"),
    "15.1": (w15_1, "half to even"), "15.2": (w15_2, "no background"), "15.3": (w15_3, "standard deviation"),
    "15.4": (w15_4, "always the mean"),
    "16.1": (w16_1, "strided"), "16.2": (w16_2, "mean of the ranks' means"), "16.3": (w16_3, "dtype ignored"),
}


def test_every_exercise_has_a_wrong_answer():
    assert set(WRONG_ANSWERS) == set(IDS)


@pytest.mark.parametrize("ex_id", IDS)
def test_wrong_answer_rejected_and_named(ex_id):
    fn, words = WRONG_ANSWERS[ex_id]
    result = exercises.check(ex_id, fn)
    assert result.status == WRONG, result
    assert result.mistake is not None and words in result.mistake, result


# ------------------------------------------------------------------------------------------------
# the checkers' own references, where the package has no function to compare with
# ------------------------------------------------------------------------------------------------


def test_pyramid_reference_matches_the_network():
    from minimask.exercises.backbone_rpn import _pyramid_ref
    from minimask.fpn import resnet_fpn_backbone
    from minimask.tape import no_grad

    model = resnet_fpn_backbone("resnet18", norm="group_norm", rng=np.random.default_rng(0), base_width=8)
    (H, W), levels = _pyramid_ref(90, 150)
    with no_grad():
        out = model(np.zeros((1, 3, H, W), np.float32))
    assert [tuple(v.shape[-2:]) for v in out.values()] == levels


def test_receptive_field_reference_matches_a_backward():
    """The support of d out[centre] / d input through a 1-D stack of convolutions of ones."""
    from minimask.conv import conv2d_backward, conv2d_forward
    from minimask.exercises.backbone_rpn import _rf_ref

    layers = [(7, 2), (3, 2), (3, 1), (3, 2), (1, 1), (3, 1)]
    xs, caches = [np.zeros((1, 1, 1, 200))], []
    for k, s in layers:
        out, cache = conv2d_forward(xs[-1], np.ones((1, 1, 1, k)), None, stride=s, padding=0)
        xs.append(out)
        caches.append(cache)
    g = np.zeros(xs[-1].shape)
    g[..., g.shape[-1] // 2] = 1.0
    for cache in reversed(caches):
        g = conv2d_backward(g, cache)[0]
    support = np.flatnonzero(g[0, 0, 0])
    assert support[-1] - support[0] + 1 == _rf_ref(layers)


def test_coco_ap_reference_matches_cocoeval():
    """AP of one category on a tiny dataset: COCOeval's number equals _coco_ap_ref on its PR table."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from minimask.evaluate import _quiet
    from minimask.exercises.training import _coco_ap_ref

    rng = np.random.default_rng(5)
    gts = [[10.0 + 40 * i, 10.0, 30.0, 30.0] for i in range(6)]
    images = [{"id": 1, "width": 400, "height": 100}]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 900.0, "iscrowd": 0}
            for i, b in enumerate(gts)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    _quiet(coco.createIndex)
    dets, hits = [], []
    for i, score in enumerate(rng.permutation(9) / 10 + 0.05):
        if i < 6 and i != 2:
            box, hit = gts[i], 1                     # a true positive (IoU 1)
        else:
            box, hit = [300.0 + 3 * i, 60.0, 20.0, 20.0], 0
        dets.append({"image_id": 1, "category_id": 1, "bbox": box, "score": float(score)})
        hits.append((score, hit))
    ev = COCOeval(coco, _quiet(coco.loadRes, dets), "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng = [ev.params.areaRng[0]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [100]
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    coco_value = float(ev.eval["precision"][0, :, 0, 0, 0].mean())
    order = sorted(hits, key=lambda t: -t[0])
    tp = np.cumsum([h for _, h in order])
    fp = np.cumsum([1 - h for _, h in order])
    assert coco_value == pytest.approx(_coco_ap_ref(tp / len(gts), tp / (tp + fp)), abs=1e-12)


def test_verdict_reference_is_the_benchmarks_criterion():
    """Exercise 15.3's reference says what benchmarks/ablations.py's `verdict` says, on its probes and on random
    seed values (two or three seeds per arm, some exactly tied at a range)."""
    import importlib.util

    from minimask.exercises.ablations import VERDICT_PROBES, _verdict_ref

    spec = importlib.util.spec_from_file_location("ablations", NBS.parent / "benchmarks" / "ablations.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(15)
    cases = list(VERDICT_PROBES) + [(list(rng.integers(0, 8, n) / 2), list(rng.integers(0, 8, n) / 2))
                                    for n in (2, 3) for _ in range(200)]
    seen = set()
    for better, worse in cases:
        runs = {f"a/{i}": {"arm": "a", "AP": v} for i, v in enumerate(better)}
        runs.update({f"b/{i}": {"arm": "b", "AP": v} for i, v in enumerate(worse)})
        want = bench.verdict({"runs": runs}, "a", "b", "AP")[0]
        assert _verdict_ref(better, worse) == want, (better, worse)
        seen.add(want)
    assert seen == {"REPRODUCED", "REVERSED", "INCONCLUSIVE"}



def test_bucket_solution_is_distributed_buckets():
    """Exercise 16.3's reference solution cuts parameters as minimask.distributed.buckets does (the checker's
    reference), beyond the checker's probes: 200 random parameter lists (sizes, float32 / float64, caps that
    some sizes hit exactly)."""
    from minimask.exercises.parallel import _bucket_lengths_ref

    rng = np.random.default_rng(16)
    for _ in range(200):
        dtypes = list(rng.choice(["f4", "f8"], size=int(rng.integers(1, 9)), p=[0.8, 0.2]))
        counts = rng.integers(1, 12, len(dtypes))
        nbytes = [int(k) * np.dtype(d).itemsize for k, d in zip(counts, dtypes, strict=True)]
        cap = int(rng.integers(8, 80))
        assert solution("16.3")(nbytes, dtypes, cap) == _bucket_lengths_ref(nbytes, dtypes, cap), (nbytes, dtypes, cap)


# ------------------------------------------------------------------------------------------------
# the chapters ship the exercises as stubs, each followed by its checker call
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chapter", CHAPTERS, ids=[f"ch{c:02d}" for c in CHAPTERS])
def test_chapter_ships_its_exercises_as_stubs(chapter):
    import re

    nbformat = pytest.importorskip("nbformat")
    path = next(NBS.glob(f"{chapter:02d}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    checked = re.findall(r'exercises\.check\("(\d\d\.\d)", (\w+)\)', code)
    expected = [(e.id, e.name) for e in exercises.for_chapter(chapter)]
    assert checked == expected, f"{path.name} checks {checked}, the registry has {expected}"
    for _, name in checked:                       # every stub is defined in the chapter and raises
        assert re.search(rf"def {name}\(.*\):\n(?:    .*\n)*?    raise NotImplementedError", code), name
