"""Chapter 04 solutions: IoU, the box encoder, the best anchor IoU for new aspect ratios."""

import numpy as np


def box_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])             # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])             # (M,)
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])                         # (N, M, 2)
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)                                                    # disjoint -> 0
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def encode_boxes(reference_boxes, proposals, weights):
    wx, wy, ww, wh = weights
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    gw, gh = reference_boxes[:, 2] - reference_boxes[:, 0], reference_boxes[:, 3] - reference_boxes[:, 1]
    gx, gy = reference_boxes[:, 0] + 0.5 * gw, reference_boxes[:, 1] + 0.5 * gh
    return np.stack([wx * (gx - px) / pw, wy * (gy - py) / ph, ww * np.log(gw / pw), wh * np.log(gh / ph)], axis=1)


def best_anchor_iou(box, sizes, aspect_ratios, stride, grid_size):
    r = np.asarray(aspect_ratios, dtype=np.float64)
    s = np.asarray(sizes, dtype=np.float64)
    hs = (np.sqrt(r)[:, None] * s[None, :]).ravel()            # ratio = h / w, area s^2
    ws = ((1 / np.sqrt(r))[:, None] * s[None, :]).ravel()
    cell = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)  # (A, 4) around (0, 0), whole pixels
    gh, gw = grid_size
    ys, xs = np.meshgrid(np.arange(gh) * stride, np.arange(gw) * stride, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)
    grid = (shifts + cell[None]).reshape(-1, 4)                 # centres on (x * stride, y * stride)
    return float(box_iou(np.asarray(box, dtype=np.float64)[None], grid).max())
