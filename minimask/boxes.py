"""Box operations: area, IoU, clipping, and the box coder that turns boxes into regression targets.

Shapes:  boxes (N, 4); a pairwise result (N, M); deltas (N, 4) or (N, 4 * K) for K classes
Boxes:   x1 y1 x2 y2 in input-image pixels, x1 <= x2 and y1 <= y2; width = x2 - x1 (torchvision's
         convention, no "+1" as in the original Detectron)
Deltas:  (dx, dy, dw, dh) = weights * ((cx - cx_a) / w_a, (cy - cy_a) / h_a, log(w / w_a), log(h / h_a))
         for a box (cx, cy, w, h) encoded against an anchor or proposal (cx_a, cy_a, w_a, h_a)
Names:   as torchvision.ops / torchvision.models.detection._utils, so the two can be read side by side
Chapter: nbs/04_boxes_and_anchors.ipynb    Paper: Faster R-CNN, Sec. 3.1.2 (Eq. 2)

None of these functions is on the tape: boxes, IoUs and regression *targets* need no gradient (the
RPN and box head losses differentiate the predicted deltas, never the boxes).
"""

from __future__ import annotations

import math

from .backend import get_array_module

# exp(dw) is clamped at 1000/16: a predicted box is never more than 1000/16 = 62.5 times wider than
# its anchor. Without it an untrained head's dw of, say, 90 overflows float32 to inf and the inf
# becomes NaN in the next IoU (inf - inf). Value from Detectron / torchvision.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _check_boxes(boxes, name="boxes"):
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as x1 y1 x2 y2, got {tuple(boxes.shape)}")


def box_area(boxes):
    """(N, 4) -> (N,) areas (x2 - x1) * (y2 - y1). Chapter: nbs/04_boxes_and_anchors.ipynb"""
    _check_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_inter(boxes1, boxes2):
    """Pairwise intersection areas (N, M) of (N, 4) and (M, 4) boxes."""
    xp = get_array_module(boxes1, boxes2)
    lt = xp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2) top-left of the overlap
    rb = xp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2) bottom-right
    wh = xp.maximum(rb - lt, 0)  # (N, M, 2) no overlap -> 0
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1, boxes2):
    """Intersection over union, (N, 4) x (M, 4) -> (N, M) in [0, 1].

    A pair whose union is zero (two zero-area boxes) gets IoU 0, not NaN: a degenerate box
    overlaps nothing. Chapter: nbs/04_boxes_and_anchors.ipynb
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    xp = get_array_module(boxes1, boxes2)
    inter = _box_inter(boxes1, boxes2)  # (N, M)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter  # (N, M)
    positive = union > 0
    return xp.where(positive, inter / xp.where(positive, union, 1), 0).astype(inter.dtype, copy=False)


def box_ioa(boxes1, boxes2):
    """Intersection over the area of boxes1, (N, 4) x (M, 4) -> (N, M) in [0, 1].

    "How much of each box in boxes1 lies inside each box in boxes2": used to keep anchors that
    sit inside a crowd region from becoming negatives. Zero-area boxes1 give 0.
    Chapter: nbs/05_rpn.ipynb
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    xp = get_array_module(boxes1, boxes2)
    inter = _box_inter(boxes1, boxes2)  # (N, M)
    area = box_area(boxes1)[:, None]  # (N, 1)
    positive = area > 0
    return xp.where(positive, inter / xp.where(positive, area, 1), 0).astype(inter.dtype, copy=False)


def clip_boxes_to_image(boxes, size):
    """Clamp (N, 4) boxes to an image of size (height, width): x into [0, w], y into [0, h].

    Chapter: nbs/05_rpn.ipynb
    """
    _check_boxes(boxes)
    xp = get_array_module(boxes)
    height, width = size
    out = xp.empty_like(boxes)
    out[:, 0::2] = xp.clip(boxes[:, 0::2], 0, width)
    out[:, 1::2] = xp.clip(boxes[:, 1::2], 0, height)
    return out


def remove_small_boxes(boxes, min_size):
    """Indices (K,) int64 of the boxes whose width and height are both >= min_size.

    Chapter: nbs/05_rpn.ipynb
    """
    _check_boxes(boxes)
    xp = get_array_module(boxes)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return xp.nonzero((ws >= min_size) & (hs >= min_size))[0].astype(xp.int64)


def _centres_sizes(boxes):
    """(N, 4) x1 y1 x2 y2 -> four (N, 1) columns cx, cy, w, h."""
    w = boxes[:, 2:3] - boxes[:, 0:1]
    h = boxes[:, 3:4] - boxes[:, 1:2]
    return boxes[:, 0:1] + 0.5 * w, boxes[:, 1:2] + 0.5 * h, w, h


def encode_boxes(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets (N, 4) that move each of `proposals` onto its `reference_boxes`.

    reference_boxes: (N, 4) the boxes to encode (the matched ground truth)
    proposals:       (N, 4) the boxes they are encoded against (anchors or proposals); must
                     have positive width and height
    weights:         (wx, wy, ww, wh), multiplied into (dx, dy, dw, dh): (1, 1, 1, 1) for the RPN,
                     (10, 10, 5, 5) for the box head, which scales its small targets up to ~unit size
    The argument names and order are torchvision's `encode_boxes(reference_boxes, proposals,
    weights)`: `decode_boxes(encode_boxes(b, a), a) == b` for every box b and anchor a.
    Chapter: nbs/04_boxes_and_anchors.ipynb
    """
    _check_boxes(reference_boxes, "reference_boxes")
    _check_boxes(proposals, "proposals")
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(
            f"reference_boxes {tuple(reference_boxes.shape)} and proposals {tuple(proposals.shape)} "
            "must pair up one to one"
        )
    xp = get_array_module(reference_boxes, proposals)
    dtype = reference_boxes.dtype
    proposals = proposals.astype(dtype, copy=False)
    wx, wy, ww, wh = (xp.asarray(w, dtype=dtype) for w in weights)  # no float64 upcast
    ex_cx, ex_cy, ex_w, ex_h = _centres_sizes(proposals)  # (N, 1) each: the anchor
    gt_cx, gt_cy, gt_w, gt_h = _centres_sizes(reference_boxes)  # (N, 1) each: the target
    dx = wx * (gt_cx - ex_cx) / ex_w
    dy = wy * (gt_cy - ex_cy) / ex_h
    dw = ww * xp.log(gt_w / ex_w)
    dh = wh * xp.log(gt_h / ex_h)
    return xp.concatenate([dx, dy, dw, dh], axis=1)  # (N, 4)


def decode_boxes(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=BBOX_XFORM_CLIP):
    """Apply deltas to boxes: (N, 4K) deltas and (N, 4) boxes -> (N, 4K) boxes (K = classes).

    The inverse of `encode_boxes`: `decode_boxes(encode_boxes(b, a), a) == b`. dw and dh are
    clamped at `bbox_xform_clip` = log(1000/16) before exp, so a wild prediction gives a box at
    most 62.5x its anchor's size instead of inf (and NaN downstream).
    Chapter: nbs/04_boxes_and_anchors.ipynb
    """
    _check_boxes(boxes)
    if rel_codes.ndim != 2 or rel_codes.shape[1] % 4 != 0 or rel_codes.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"rel_codes must have shape (N, 4K) with N = {boxes.shape[0]} boxes, got {tuple(rel_codes.shape)}"
        )
    xp = get_array_module(rel_codes, boxes)
    dtype = rel_codes.dtype
    boxes = boxes.astype(dtype, copy=False)
    wx, wy, ww, wh = (xp.asarray(w, dtype=dtype) for w in weights)
    cx, cy, w, h = _centres_sizes(boxes)  # (N, 1) each
    dx = rel_codes[:, 0::4] / wx  # (N, K)
    dy = rel_codes[:, 1::4] / wy
    dw = xp.minimum(rel_codes[:, 2::4] / ww, xp.asarray(bbox_xform_clip, dtype=dtype))
    dh = xp.minimum(rel_codes[:, 3::4] / wh, xp.asarray(bbox_xform_clip, dtype=dtype))
    pred_cx = dx * w + cx  # (N, K)
    pred_cy = dy * h + cy
    half_w = xp.asarray(0.5, dtype=dtype) * xp.exp(dw) * w
    half_h = xp.asarray(0.5, dtype=dtype) * xp.exp(dh) * h
    out = xp.stack([pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h], axis=2)  # (N, K, 4)
    return out.reshape(rel_codes.shape)


class BoxCoder:
    """torchvision's `BoxCoder(weights, bbox_xform_clip)`: the pair above with the weights bound.

    `encode_single(reference_boxes, proposals)` / `decode_single(rel_codes, boxes)` work on one
    array; `encode(list, list)` / `decode(rel_codes, list)` on per-image lists, as torchvision's.
    Chapter: nbs/04_boxes_and_anchors.ipynb
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=BBOX_XFORM_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode_single(self, reference_boxes, proposals):
        return encode_boxes(reference_boxes, proposals, self.weights)

    def decode_single(self, rel_codes, boxes):
        return decode_boxes(rel_codes, boxes, self.weights, self.bbox_xform_clip)

    def encode(self, reference_boxes, proposals):
        """Lists of (N_i, 4) targets and proposals -> list of (N_i, 4) deltas."""
        if len(reference_boxes) == 0:
            return []
        xp = get_array_module(*reference_boxes, *proposals)
        sizes = [len(b) for b in reference_boxes]
        codes = self.encode_single(xp.concatenate(reference_boxes), xp.concatenate(proposals))
        return xp.split(codes, list(_cumsum(sizes[:-1])))

    def decode(self, rel_codes, boxes):
        """(sum N_i, 4K) deltas and a list of (N_i, 4) boxes -> (sum N_i, K, 4) boxes."""
        xp = get_array_module(rel_codes, *boxes)
        concat = xp.concatenate(boxes)
        pred = self.decode_single(rel_codes.reshape(concat.shape[0], -1), concat)
        return pred.reshape(concat.shape[0], -1, 4)


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total
