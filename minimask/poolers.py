"""Multi-level RoIAlign: each box is pooled from the one FPN level that suits its size.

Shapes:  features: list of L maps (N, C, H_l, W_l), finest first (P2, P3, P4, P5);
         boxes (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or a list of (K_i, 4)
         per image; output (K, C, ph, pw) in the order of the boxes
Levels:  k = floor(4 + log2(sqrt(area) / 224)), clamped to [k_min, k_max] (FPN paper, Eq. 1):
         a 224x224 box (ImageNet size) goes to P4, each halving of its side one level finer.
Sizes:   7x7 for the box head, 14x14 for the mask head (both with sampling_ratio 2).
Method:  RoIAlign (average of the bin's samples) by default; the paper's Table 2c alternatives by
         `method` ("roi_pool", "roi_warp") and `aggregation` ("max"): see `pool_rois`.
Chapter: nbs/07_roipool_vs_roialign.ipynb    Paper: FPN (Lin et al. 2017), Sec. 4.2
"""

from __future__ import annotations

import math

import numpy as np

from . import tape
from .backend import get_array_module, to_device, to_host
from .module import Module
from .roi_align import convert_boxes_to_roi_format, output_pair, roi_align
from .roi_align_max import roi_align_max
from .roi_pool import roi_pool
from .roi_warp import roi_warp


def map_levels(boxes, k_min=2, k_max=5, canonical_scale=224, canonical_level=4, eps=1e-6):
    """Pyramid level k (int, in [k_min, k_max]) of each box (K, 4) x1 y1 x2 y2 (or (K, 5) rois).

    k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps); eps as torchvision, so a
    box of exactly 112x112 lands on level 3 despite rounding in log2. Monotone in the box area.
    """
    xp = get_array_module(boxes)
    b = boxes[:, -4:]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    s = xp.sqrt(xp.maximum(area, 0))                      # in the boxes' dtype, as torchvision
    with np.errstate(divide="ignore"):  # a zero-size box goes to the finest level
        k = xp.floor(canonical_level + xp.log2(s / canonical_scale) + eps)
    k = xp.where(xp.isfinite(k), k, k_min)
    return xp.clip(k, k_min, k_max).astype(np.int64)


def merge_levels_forward(*pooled, positions):
    """Put each level's pooled rows back in box order: out[positions[l]] = pooled[l]."""
    xp = get_array_module(*pooled)
    K = sum(int(p.shape[0]) for p in pooled)
    out = xp.empty((K,) + tuple(pooled[0].shape[1:]), dtype=pooled[0].dtype)
    for rows, pos in zip(pooled, positions, strict=True):
        out[pos] = rows
    return out, positions


def merge_levels_backward(dout, positions):
    """forward was: out[positions[l]] = pooled[l]; so d pooled[l] = dout[positions[l]]."""
    return tuple(dout[pos] for pos in positions)


merge_levels = tape.op(merge_levels_forward, merge_levels_backward)


METHODS = ("roi_align", "roi_pool", "roi_warp")


def pool_rois(feature, rois, output_size, scale, sampling_ratio, aligned, method="roi_align", aggregation="avg"):
    """One level's RoI features (K, C, ph, pw) by the chosen extractor (the paper's Table 2c rows):

    roi_align + avg   RoIAlign (the default; its CUDA kernel on CuPy)
    roi_align + max   the same bilinear samples, max per bin (roi_align_max.py)
    roi_warp          RoIPool's rounded box, bilinear samples, avg or max per bin (roi_warp.py)
    roi_pool          rounded box and bins, max per bin (`aligned`, `sampling_ratio`, `aggregation` unused)
    """
    if method == "roi_align":
        if aggregation == "avg":
            return roi_align(feature, rois, output_size, scale, sampling_ratio, aligned)
        if aggregation == "max":
            return roi_align_max(feature, rois, output_size, scale, sampling_ratio, aligned)
        raise ValueError(f"aggregation must be 'avg' or 'max', got {aggregation!r}")
    if method == "roi_warp":
        return roi_warp(feature, rois, output_size, scale, sampling_ratio, aggregation)
    if method == "roi_pool":
        return roi_pool(feature, rois, output_size, scale)
    raise ValueError(f"RoI extractor must be one of {METHODS}, got {method!r}")


def multiscale_roi_align(features, boxes, output_size, scales, sampling_ratio=2, aligned=False,
                         canonical_scale=224, canonical_level=4, method="roi_align", aggregation="avg"):
    """RoIAlign over a pyramid: features list of (N, C, H_l, W_l) (arrays or Tensors), scales their
    spatial scales (1/4, 1/8, ...), boxes (K, 5) or list of (K_i, 4) -> Tensor (K, C, ph, pw).
    One map: every box is pooled from it. `method`, `aggregation`: see `pool_rois`.
    Chapter: nbs/07_roipool_vs_roialign.ipynb
    """
    if len(features) != len(scales):
        raise ValueError(f"{len(features)} feature maps but {len(scales)} scales")
    data0 = features[0].data if isinstance(features[0], tape.Tensor) else features[0]
    xp = get_array_module(data0)
    rois = convert_boxes_to_roi_format(boxes, xp).astype(data0.dtype, copy=False)
    ph, pw = output_pair(output_size)
    if len(features) == 1:
        return pool_rois(features[0], rois, (ph, pw), scales[0], sampling_ratio, aligned, method, aggregation)
    k_min = int(round(-math.log2(scales[0])))
    k_max = int(round(-math.log2(scales[-1])))
    levels = map_levels(rois, k_min, k_max, canonical_scale, canonical_level) - k_min   # (K,) 0..L-1
    host_levels = to_host(levels)   # one sync: how many RoIs go to each level is a shape
    pooled, positions = [], []
    for lvl, (feat, scale) in enumerate(zip(features, scales, strict=True)):   # a loop over the L levels
        pos = to_device(np.flatnonzero(host_levels == lvl), xp)
        pooled.append(pool_rois(feat, rois[pos], (ph, pw), scale, sampling_ratio, aligned, method, aggregation))
        positions.append(pos)
    return merge_levels(*pooled, positions=positions)


def _infer_scale(feature_shape, image_size):
    """The power of two closest to feature size / image size (as torchvision infers it)."""
    approx = feature_shape[-2] / image_size[0]
    return 2.0 ** round(math.log2(approx))


class MultiScaleRoIAlign(Module):
    """torchvision.ops.MultiScaleRoIAlign: pick maps by name, infer their scales, pool each box.

    forward(x: dict name -> (N, C, H_l, W_l), boxes: list of (K_i, 4) per image,
            image_shapes: list of (h, w)) -> (K, C, ph, pw), boxes concatenated in image order.
    `aligned=False` as torchvision; our model passes True. `method` / `aggregation` (not in
    torchvision): the paper's Table 2c extractors, see `pool_rois`. Chapter: nbs/07_roipool_vs_roialign.ipynb
    """

    def __init__(self, featmap_names, output_size, sampling_ratio, canonical_scale=224,
                 canonical_level=4, aligned=False, method="roi_align", aggregation="avg"):
        super().__init__()
        self.method, self.aggregation = method, aggregation
        self.featmap_names = list(featmap_names)
        self.output_size = output_pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = bool(aligned)

    def forward(self, x, boxes, image_shapes):
        missing = [n for n in self.featmap_names if n not in x]
        if missing:
            raise ValueError(f"feature maps {missing} not found; have {list(x)}")
        feats = [x[n] for n in self.featmap_names]
        size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_infer_scale(f.shape, size) for f in feats]
        return multiscale_roi_align(feats, boxes, self.output_size, scales, self.sampling_ratio,
                                    self.aligned, self.canonical_scale, self.canonical_level, self.method,
                                    self.aggregation)
