"""Chapter 11 solutions: the resized size, the FPN level of a box, batching images."""

import math

import numpy as np


def resized_size(h, w, min_size, max_size):
    scale = min(min_size / min(h, w), max_size / max(h, w))                 # short side -> min_size, capped
    return math.floor(h * scale), math.floor(w * scale)


def fpn_level(boxes):
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = np.floor(4 + np.log2(np.sqrt(area) / 224) + 1e-6)                   # 224 x 224 -> P4
    return np.clip(k, 2, 5).astype(np.int64)


def batch_images(images):
    H = 32 * math.ceil(max(im.shape[1] for im in images) / 32)
    W = 32 * math.ceil(max(im.shape[2] for im in images) / 32)
    batch = np.zeros((len(images), 3, H, W), dtype=images[0].dtype)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[1], :im.shape[2]] = im                        # top-left: boxes stay valid
    return batch
