"""Matching anchors (or proposals) to ground truth, and sampling a balanced minibatch of them.

Shapes:  match quality (G, R): IoU of G ground-truth boxes with R anchors; matches (R,) int64;
         labels (R,) float32 in {1: foreground, 0: background, -1: ignored}
Matches: a gt index >= 0, or BELOW_LOW_THRESHOLD = -1 (IoU < low: background) or
         BETWEEN_THRESHOLDS = -2 (low <= IoU < high: neither, ignored by the loss), as torchvision
Random:  the sampler takes a NumPy `Generator`, or a list of one per image (`per_image`); it runs on
         the host (see `subsample_labels`)
Chapter: nbs/05_rpn.ipynb    Paper: Faster R-CNN Sec. 3.1.2 (thresholds 0.7 / 0.3, 256 anchors, 1:1)
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_device, to_host
from .boxes import box_ioa, box_iou


class Matcher:
    """torchvision's `Matcher(high_threshold, low_threshold, allow_low_quality_matches)`.

    Each column (anchor) takes the ground truth it overlaps most. If that IoU is below
    `low_threshold` it is BELOW_LOW_THRESHOLD, if it is in [low, high) it is BETWEEN_THRESHOLDS.
    With `allow_low_quality_matches` every ground truth also keeps the anchor(s) that overlap it
    most, however low the IoU (Faster R-CNN's rule (i): without it a small or oddly shaped object
    might get no positive anchor at all). Such a rescued anchor takes its own best ground truth, as
    in torchvision. One difference: a ground truth whose best IoU is 0 rescues nothing (torchvision
    would turn every anchor with IoU 0 into a positive for a degenerate, zero-area box).
    Chapter: nbs/05_rpn.ipynb
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        """(G, R) quality (IoU) -> (R,) int64 matches. G = 0 gives all BELOW_LOW_THRESHOLD."""
        q = match_quality_matrix
        if q.ndim != 2:
            raise ValueError(f"match_quality_matrix must be (G, R), got shape {tuple(q.shape)}")
        xp = get_array_module(q)
        if q.shape[0] == 0:  # no ground truth: everything is background
            return xp.full((q.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=xp.int64)
        if q.shape[1] == 0:
            return xp.zeros((0,), dtype=xp.int64)
        matched_vals = q.max(axis=0)  # (R,) best IoU of each anchor
        all_matches = q.argmax(axis=0).astype(xp.int64)  # (R,) the gt it comes from (first on ties)
        matches = all_matches.copy()
        matches[matched_vals < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_for_gt = q.max(axis=1, keepdims=True)  # (G, 1) best IoU each gt reaches
            # every anchor that reaches some gt's best IoU (ties included), if that IoU is > 0
            rescued = ((q == best_for_gt) & (best_for_gt > 0)).any(axis=0)  # (R,)
            matches = xp.where(rescued, all_matches, matches)  # no boolean gather: no host sync
        return matches


def label_anchors(anchors, gt_boxes, matcher, iscrowd=None, crowd_ioa_thresh=0.0):
    """Training labels for one image's anchors (torchvision's `assign_targets_to_anchors`).

    anchors:  (R, 4); gt_boxes: (G, 4); iscrowd: (G,) bool/int or None
    returns:  labels (R,) float32 in {1, 0, -1} and matched_gt_boxes (R, 4) (the gt each anchor
              regresses to; meaningful only where labels == 1)
    Crowd boxes (COCO `iscrowd=1`: one box around a group of objects) are never matched, so never
    make positives; and an anchor whose area lies more than `crowd_ioa_thresh` inside a crowd box
    (default 0: any overlap) is not used as a negative either: it is labelled -1, ignored.
    No ground truth at all: every anchor is a negative.
    Chapter: nbs/05_rpn.ipynb
    """
    xp = get_array_module(anchors)
    num = anchors.shape[0]
    crowd = xp.zeros((gt_boxes.shape[0],), dtype=bool) if iscrowd is None else xp.asarray(iscrowd).astype(bool)
    if crowd.shape != (gt_boxes.shape[0],):
        raise ValueError(f"iscrowd has shape {tuple(crowd.shape)}, expected ({gt_boxes.shape[0]},) for the gt boxes")
    gt = gt_boxes.astype(anchors.dtype, copy=False)  # (G, 4)
    if gt.shape[0] == 0:
        return xp.zeros((num,), dtype=anchors.dtype), xp.zeros_like(anchors)
    # Crowd boxes take part with quality -1: never matched, never rescued (selecting the non-crowd
    # rows instead would be a data-dependent shape, a host sync on a GPU). With no non-crowd gt,
    # every anchor's best quality is -1 < low threshold: background, as with no gt at all.
    quality = xp.where(crowd[:, None], anchors.dtype.type(-1), box_iou(gt, anchors))  # (G, R)
    matches = matcher(quality)  # (R,)
    matched = gt[xp.maximum(matches, 0)]  # (R, 4)
    labels = (matches >= 0).astype(anchors.dtype)
    labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0
    # anchors mostly inside a crowd box are not negatives either (all gt at once, crowd ones count)
    in_crowd = ((box_ioa(anchors, gt) > crowd_ioa_thresh) & crowd[None, :]).any(axis=1)  # (R,)
    labels[in_crowd & (labels == 0)] = -1.0
    return labels, matched


def subsample_labels(labels, num_samples, positive_fraction, rng, bg_label=0):
    """Pick at most `num_samples` anchors, at most `positive_fraction` of them foreground.

    labels:   (R,) with >= 1 foreground (for the box head: the class), == bg_label background,
              -1 ignored
    returns:  (pos_idx, neg_idx) int64, sorted; negatives fill whatever positives leave free
    rng:      a NumPy `Generator`. The draw happens on the host, whatever the array module of
              `labels`: it is a few hundred index picks per image, and it keeps CPU and GPU runs on
              the same anchors for the same seed. The indices come back on the labels' module.
    Chapter: nbs/05_rpn.ipynb
    """
    xp = get_array_module(labels)
    host = to_host(labels)
    positive = np.nonzero((host != -1) & (host != bg_label))[0]
    negative = np.nonzero(host == bg_label)[0]
    num_pos = min(positive.size, int(num_samples * positive_fraction))
    num_neg = min(negative.size, num_samples - num_pos)
    pos = np.sort(rng.choice(positive, size=num_pos, replace=False)) if num_pos else positive[:0]
    neg = np.sort(rng.choice(negative, size=num_neg, replace=False)) if num_neg else negative[:0]
    return to_device(pos.astype(np.int64), xp), to_device(neg.astype(np.int64), xp)


def per_image(rng, n):
    """One generator per image of a batch of `n`: the list itself when `rng` is one (checked), else
    [rng] * n.

    A single Generator is one stream the images draw from in turn (image 0's anchors, then image
    1's, ...), as minimask always did: the same draws as before. A list of independent per-image
    generators (train.py keys them by seed, iteration and image id) makes each image's samples a
    function of that image alone, so a batch split across processes samples exactly what the whole
    batch samples in one (distributed.py).
    """
    if isinstance(rng, (list, tuple)):
        if len(rng) != n:
            raise ValueError(f"{len(rng)} random generators for a batch of {n} images (one per image)")
        return list(rng)
    return [rng] * n


def sampled_indices(sampler, labels, rng):
    """Per image (pos_idx, neg_idx), sorted int64 host arrays, from `sampler`.

    `BalancedPositiveNegativeSampler.sample` gives them directly (one host copy per call). Any other
    sampler with torchvision's interface (`sampler(labels, rng)` -> bool masks) works too, its masks
    read back per image. rng: a Generator or one per image (`per_image`).
    """
    if hasattr(sampler, "sample"):
        return sampler.sample(labels, rng)
    pos_masks, neg_masks = sampler(labels, rng)
    return [(np.flatnonzero(to_host(p)).astype(np.int64), np.flatnonzero(to_host(q)).astype(np.int64))
            for p, q in zip(pos_masks, neg_masks, strict=True)]


class BalancedPositiveNegativeSampler:
    """torchvision's sampler: per image, `batch_size_per_image` anchors, `positive_fraction` fg.

    `sampler(labels_per_image, rng)` -> (pos_masks, neg_masks), lists of (R_i,) bool.
    Chapter: nbs/05_rpn.ipynb
    """

    def __init__(self, batch_size_per_image, positive_fraction):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def sample(self, labels, rng):
        """Per image, the sampled (pos_idx, neg_idx): sorted int64 NumPy arrays on the host.

        The labels of every image come to the host in one copy (one sync per call, not per image);
        the draws are `subsample_labels`' exactly, image after image, each from its generator
        (`rng`: one Generator for all, or a list of one per image, see `per_image`).
        """
        if not labels:
            return []
        xp = get_array_module(*labels)
        host = to_host(xp.concatenate([lab.reshape(-1) for lab in labels])) if xp is not np else None
        out, start = [], 0
        for lab, rng_i in zip(labels, per_image(rng, len(labels)), strict=True):
            part = lab if host is None else host[start:start + lab.shape[0]]
            start += lab.shape[0]
            out.append(subsample_labels(part, self.batch_size_per_image, self.positive_fraction, rng_i))
        return out

    def __call__(self, labels, rng):
        pos_masks, neg_masks = [], []
        for lab, (pos, neg) in zip(labels, self.sample(labels, rng), strict=True):
            xp = get_array_module(lab)
            pos, neg = to_device(pos, xp), to_device(neg, xp)
            pm = xp.zeros(lab.shape, dtype=bool)
            nm = xp.zeros(lab.shape, dtype=bool)
            pm[pos] = True
            nm[neg] = True
            pos_masks.append(pm)
            neg_masks.append(nm)
        return pos_masks, neg_masks
