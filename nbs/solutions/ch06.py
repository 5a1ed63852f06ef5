"""Chapter 06 solutions: greedy NMS, class-wise NMS."""

import numpy as np


def _iou(b):
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


def greedy_nms(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")          # best first; ties keep the lower index first
    iou = _iou(boxes)
    suppressed = np.zeros(len(scores), dtype=bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue                                    # a suppressed box suppresses nothing
        keep.append(i)
        later = order[rank + 1:]
        suppressed[later[iou[i, later] > iou_threshold]] = True
    return np.array(keep, dtype=np.int64)


def class_wise_nms(boxes, scores, labels, iou_threshold):
    # torchvision's trick: move each class to its own far-away region, so that boxes of different
    # classes cannot overlap, then one plain NMS
    offsets = labels.astype(boxes.dtype) * (boxes.max() + 1)
    return greedy_nms(boxes + offsets[:, None], scores, iou_threshold)
