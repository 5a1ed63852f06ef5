"""Chapter 13 solutions: COCO boxes, mask IoU with crowds, AP by hand."""

import numpy as np


def xywh_to_xyxy(boxes):
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def mask_iou(dt, gt, iscrowd):
    d = dt.reshape(len(dt), -1).astype(np.float64)
    g = gt.reshape(len(gt), -1).astype(np.float64)
    inter = d @ g.T                                                     # (D, G)
    union = d.sum(1)[:, None] + g.sum(1)[None, :] - inter
    crowd = np.asarray(iscrowd, dtype=bool)[None, :]
    union = np.where(crowd, d.sum(1)[:, None], union)                   # crowd: over the detection only
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def coco_ap(recall, precision):
    q = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]   # the envelope
    thresholds = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, thresholds, side="left")             # first row reaching each recall
    return float(np.mean([q[i] if i < len(q) else 0.0 for i in idx]))
