"""Non-maximum suppression: keep the best-scoring box, drop the boxes that overlap it, repeat.

Shapes:  boxes (N, 4) x1 y1 x2 y2; scores (N,); idxs (N,) int class (or level) of each box
Returns: (K,) int64 indices of the kept boxes, by decreasing score; equal scores keep input order
Rule:    box j is dropped if some kept box i ranked above it has IoU(i, j) > iou_threshold
Chapter: nbs/06_nms.ipynb    Paper: Faster R-CNN Sec. 3.3 (NMS at IoU 0.7 on proposals)

Reference: the greedy loop below (`greedy_nms`), O(kept * N) IoUs. The sweep engine
(fast/nms.py) gives the same kept set with far fewer IoUs; `fast.disable()` turns it off.
CuPy inputs go to the CUDA kernel instead (kernels/nms.cu via `minimask.kernels.nms_cuda`: the
64-bit bitmask algorithm, chapter 08), which keeps the same order and tie rule.
"""

from __future__ import annotations

import numpy as np

from . import fast
from .backend import get_array_module, to_device, to_host
from .fast import nms as sweep
from .kernels import nms_cuda


def nms(boxes, scores, iou_threshold):
    """Greedy NMS (torchvision.ops.nms): (N, 4) boxes, (N,) scores -> (K,) int64 kept indices.

    Kept indices come sorted by decreasing score; ties keep the lower index first (stable).
    A box is suppressed by a kept, higher-ranked box with IoU strictly above `iou_threshold`.
    Chapter: nbs/06_nms.ipynb
    """
    return _nms(boxes, scores, iou_threshold, None)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category of `idxs` (N,) int; boxes of different categories never interact.

    torchvision shifts each category's boxes by idxs * (max coordinate + 1) so that they can no
    longer overlap, then runs one NMS. Here the boxes stay put: each box's category goes to the
    greedy loop (a kept box suppresses only its own category; the sweep engine puts categories in
    far-apart strips instead), so IoUs are computed on the original boxes and the result equals
    per-class `nms` exactly (a float32 offset of 80 * 1333 px would round the coordinates).
    Chapter: nbs/06_nms.ipynb
    """
    if idxs is None:
        raise ValueError("batched_nms needs idxs (N,), the category of each box")
    return _nms(boxes, scores, iou_threshold, idxs)


def _nms(boxes, scores, iou_threshold, idxs):
    xp = get_array_module(boxes, scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) as x1 y1 x2 y2, got shape {tuple(boxes.shape)}")
    if tuple(scores.shape) != (boxes.shape[0],):
        raise ValueError(f"scores must be (N,) = ({boxes.shape[0]},) for boxes {tuple(boxes.shape)}, "
                         f"got {tuple(scores.shape)}")
    if idxs is not None and tuple(idxs.shape) != (boxes.shape[0],):
        raise ValueError(f"idxs must be (N,) = ({boxes.shape[0]},), got {tuple(idxs.shape)}")
    t = float(iou_threshold)
    if t != t:
        raise ValueError("iou_threshold is NaN")
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros((0,), dtype=xp.int64)
    if xp is not np:
        return _nms_on_device(boxes, scores, t, idxs)
    b = to_host(boxes)
    if b.dtype.kind != "f":
        b = b.astype(np.float32)
    if not np.isfinite(b).all():
        raise ValueError(f"boxes {tuple(b.shape)} contain NaN or inf")
    order = np.argsort(-to_host(scores), kind="stable")  # rank -> box index, best first
    b = b[order]  # (N, 4) boxes by rank
    groups = None
    if idxs is not None:
        _, groups = np.unique(to_host(idxs)[order], return_inverse=True)  # (N,) 0..C-1 by rank
        groups = groups.reshape(-1)
    if fast.pick_nms():  # the same rule on a sparse graph of overlapping pairs (fast/nms.py)
        keep = sweep.keep_ranks(b, t, groups)
    else:
        keep = greedy_nms(b, t, groups)
    return to_device(order[keep].astype(np.int64), xp)


def greedy_nms(b, t, groups=None):
    """The paper's loop on boxes in rank order, b (N, 4) best first -> (N,) bool keep.

    Take the best undecided box, keep it, drop every undecided box (of its group) with IoU > t; repeat.
    IoU as `box_iou` computes it, so the engine's sweep gives the same answer bit for bit.
    """
    n = b.shape[0]
    keep = np.zeros(n, dtype=bool)
    undecided = np.arange(n)                                       # ranks, best first
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    while undecided.size:
        i, rest = undecided[0], undecided[1:]
        keep[i] = True
        w = np.maximum(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0)
        h = np.maximum(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0)
        inter = w * h
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        suppressed = iou > t
        if groups is not None:
            suppressed &= groups[rest] == groups[i]                # other categories never interact
        undecided = rest[~suppressed]
    return keep


def _nms_on_device(boxes, scores, t, idxs):
    """CuPy arrays: the CUDA bitmask kernel. Categories are kept apart with torchvision's offset
    trick, in float64 so that the shifted coordinates stay exact."""
    if idxs is not None:
        b = boxes.astype("float64")
        offset = (b.max() + 1.0) * idxs.astype("float64")
        boxes = b + offset[:, None]
    return nms_cuda(boxes, scores, t)
