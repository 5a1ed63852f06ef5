"""Chapter 10 solutions: the per-class mask gather, the mask loss, the paste box."""

import numpy as np


def mask_logits_for_class(mask_logits, labels):
    return mask_logits[np.arange(len(labels)), labels]                      # (P, M, M)


def mask_loss(mask_logits, labels, mask_targets):
    x = mask_logits_for_class(mask_logits, labels)                          # only the gt class's mask
    t = mask_targets
    per_pixel = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))     # sigmoid BCE, stable
    return float(per_pixel.mean())                                          # over P * M * M


def paste_box(box, M, padding):
    x1, y1, x2, y2 = box
    scale = (M + 2 * padding) / M                                           # the padded map's extent
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
    return tuple(int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))      # int() truncates
