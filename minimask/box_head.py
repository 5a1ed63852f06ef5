"""Box head: sample RoIs, classify them and refine their boxes; the Fast R-CNN losses; detections.

Shapes:  R sampled RoIs (all images), K classes including background (0), G gt boxes per image
         pooled features (R, C, 7, 7) -> TwoMLPHead -> (R, 1024) -> class_logits (R, K),
         box_regression (R, 4K): one (dx, dy, dw, dh) per class, encoded with weights (10, 10, 5, 5)
Boxes:   x1 y1 x2 y2 in pixels of the resized input image
Labels:  (R,) int64: 0 background, 1..K-1 a class, -1 ignored (never sampled)
Sampling (training): proposals + gt boxes, matched at IoU 0.5 (>= fg, < bg), then at most 512 RoIs
         per image, at most 25% foreground. Crowd gt boxes are never matched; a RoI lying more than
         `crowd_ioa_thresh` inside one is not a negative either.
Losses:  loss_classifier = softmax cross-entropy over the sampled RoIs (mean);
         loss_box_reg = smooth L1 of the positives' own-class deltas, summed, / number of sampled RoIs
Names:   as torchvision.models.detection.roi_heads (fc6, fc7, cls_score, bbox_pred)
Chapter: nbs/09_box_head.ipynb    Paper: Fast R-CNN Sec. 2.3; Mask R-CNN Sec. 3 (Training)
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_device, to_host
from .boxes import box_ioa, box_iou, clip_boxes_to_image
from .layers import Linear, flatten, gather_rows, mul, relu, reshape, softmax_forward
from .losses import cross_entropy, smooth_l1_loss
from .matching import Matcher, sampled_indices
from .module import Module
from .nms import batched_nms

# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------


class TwoMLPHead(Module):
    """flatten -> fc6 -> ReLU -> fc7 -> ReLU: (R, C, 7, 7) -> (R, representation_size)."""

    def __init__(self, in_channels, representation_size=1024, rng=None):
        super().__init__()
        self.fc6 = Linear(in_channels, representation_size, rng=rng)
        self.fc7 = Linear(representation_size, representation_size, rng=rng)

    def forward(self, x):
        x = flatten(x, start_dim=1)                                # (R, C*7*7)
        x = relu(self.fc6(x))                                      # (R, 1024)
        return relu(self.fc7(x))                                   # (R, 1024)


class FastRCNNPredictor(Module):
    """Two linear layers on the RoI representation: class logits (R, K) and deltas (R, 4K)."""

    def __init__(self, in_channels, num_classes, rng=None):
        super().__init__()
        self.cls_score = Linear(in_channels, num_classes, rng=rng)
        self.bbox_pred = Linear(in_channels, num_classes * 4, rng=rng)

    def forward(self, x):
        if x.ndim == 4:
            x = flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


# ------------------------------------------------------------------------------------------------
# RoI sampling (training)
# ------------------------------------------------------------------------------------------------


def assign_targets_to_proposals(proposals, gt_boxes, gt_labels, matcher, crowd_boxes=None, crowd_ioa_thresh=0.7):
    """Match one image's proposals (R, 4) to its non-crowd gt (G, 4) / (G,) labels.

    Returns matched_idxs (R,) int64 (the gt each proposal regresses to, clamped to >= 0; meaningful
    where labels > 0) and labels (R,) int64: the gt's class, 0 (IoU < bg) or -1 (in between, or a
    would-be negative lying inside a crowd box). No gt: everything background, matched_idxs 0.
    Chapter: nbs/09_box_head.ipynb
    """
    xp = get_array_module(proposals)
    R = proposals.shape[0]
    if gt_boxes.shape[0] == 0:
        matched = xp.zeros((R,), dtype=xp.int64)
        labels = xp.zeros((R,), dtype=xp.int64)
    else:
        m = matcher(box_iou(gt_boxes.astype(proposals.dtype, copy=False), proposals))   # (R,)
        matched = xp.maximum(m, 0)
        labels = gt_labels[matched].astype(xp.int64)
        labels[m == Matcher.BELOW_LOW_THRESHOLD] = 0
        labels[m == Matcher.BETWEEN_THRESHOLDS] = -1
    if crowd_boxes is not None and crowd_boxes.shape[0] and R:
        inside = box_ioa(proposals, crowd_boxes.astype(proposals.dtype, copy=False)).max(axis=1)   # (R,)
        labels[(labels == 0) & (inside > crowd_ioa_thresh)] = -1
    return matched, labels


def select_training_samples(proposals, gt_boxes, gt_labels, matcher, sampler, box_coder, rng, crowd_boxes=None,
                            crowd_ioa_thresh=0.7):
    """torchvision's `RoIHeads.select_training_samples`, one list entry per image.

    proposals: list of (R_i, 4) from the RPN (no gradient); gt_boxes / gt_labels / crowd_boxes: lists
    of the non-crowd (G_i, 4) / (G_i,) and crowd (C_i, 4) boxes. The gt boxes are appended to the
    proposals (so every object has at least one perfect RoI), matched, and `sampler(labels, rng)`
    picks the RoIs. Returns lists: proposals (S_i, 4), matched_idxs (S_i,), labels (S_i,),
    regression_targets (S_i, 4).
    Chapter: nbs/09_box_head.ipynb
    """
    n = len(proposals)
    crowd_boxes = crowd_boxes if crowd_boxes is not None else [None] * n
    all_props, all_matched, all_labels = [], [], []
    for props, gt, gl, crowd in zip(proposals, gt_boxes, gt_labels, crowd_boxes, strict=True):
        xp = get_array_module(props)
        props = xp.concatenate([props, gt.astype(props.dtype, copy=False)], axis=0)   # (R_i + G_i, 4)
        matched, labels = assign_targets_to_proposals(props, gt, gl, matcher, crowd, crowd_ioa_thresh)
        all_props.append(props)
        all_matched.append(matched)
        all_labels.append(labels)
    picked = sampled_indices(sampler, all_labels, rng)                 # host indices: one sync in all
    out_props, out_matched, out_labels, out_targets = [], [], [], []
    for props, matched, labels, (pos, neg), gt in zip(all_props, all_matched, all_labels, picked, gt_boxes,
                                                      strict=True):
        xp = get_array_module(props)
        keep = to_device(np.sort(np.concatenate([pos, neg])), xp)      # sorted, as torch.where
        props, matched, labels = props[keep], matched[keep], labels[keep]
        if gt.shape[0] == 0:
            targets = xp.zeros(props.shape, dtype=props.dtype)         # all background: no regression
        else:
            targets = box_coder.encode_single(gt[matched].astype(props.dtype, copy=False), props)
        out_props.append(props)
        out_matched.append(matched)
        out_labels.append(labels)
        out_targets.append(targets)
    return out_props, out_matched, out_labels, out_targets


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets, beta=1.0 / 9):
    """(loss_classifier, loss_box_reg) as torchvision's `fastrcnn_loss`, on the tape.

    class_logits (R, K), box_regression (R, 4K) Tensors; labels, regression_targets: lists of
    per-image (S_i,) / (S_i, 4) arrays (concatenated, R = sum S_i). Only each positive RoI's own
    class's 4 deltas enter the box loss, summed and divided by R (all sampled RoIs), so the
    regression term weighs the same whatever the positive share of a batch.
    Chapter: nbs/09_box_head.ipynb
    """
    xp = get_array_module(*(labels if isinstance(labels, (list, tuple)) else [labels]))
    labels = xp.concatenate(labels, axis=0) if isinstance(labels, (list, tuple)) else labels
    targets = (xp.concatenate(regression_targets, axis=0) if isinstance(regression_targets, (list, tuple))
               else regression_targets)
    R, K = class_logits.shape
    if tuple(box_regression.shape) != (R, 4 * K):
        raise ValueError(f"fastrcnn_loss: box_regression {tuple(box_regression.shape)} does not match class "
                         f"logits {(R, K)} (need (R, 4K))")
    loss_classifier = cross_entropy(class_logits, labels)
    pos = xp.nonzero(labels > 0)[0]                                     # (P,)
    rows = pos * K + labels[pos]                                        # row of (R*K, 4) = RoI's own class
    deltas = gather_rows(reshape(box_regression, shape=(R * K, 4)), rows)    # (P, 4)
    box_loss = smooth_l1_loss(deltas, targets[pos].astype(deltas.dtype, copy=False), beta=beta, reduction="sum")
    return loss_classifier, mul(box_loss, 1.0 / max(R, 1))


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------


def postprocess_detections(class_logits, box_regression, proposals, image_shapes, box_coder, score_thresh=0.05,
                           nms_thresh=0.5, detections_per_img=100, min_size=1e-2):
    """Detections per image, as torchvision's `RoIHeads.postprocess_detections` (plain arrays).

    softmax scores; every class's box decoded from its deltas and clipped to the image; background
    dropped; (RoI, class) pairs with score > score_thresh and both sides >= min_size kept;
    class-wise NMS at nms_thresh; the best detections_per_img. Returns lists of boxes (D_i, 4),
    scores (D_i,), labels (D_i,) int64, ordered by decreasing score.
    Chapter: nbs/09_box_head.ipynb
    """
    xp = get_array_module(class_logits)
    R, K = class_logits.shape
    counts = [p.shape[0] for p in proposals]
    pred_boxes = box_coder.decode_single(box_regression, xp.concatenate(proposals, axis=0))  # (R, 4K)
    pred_boxes = pred_boxes.reshape(R, K, 4)
    pred_scores = softmax_forward(class_logits, dim=-1)[0]                  # (R, K)
    clipped, start = [], 0
    for n, shape in zip(counts, image_shapes, strict=True):                 # clip to each image: no sync
        clipped.append(clip_boxes_to_image(pred_boxes[start:start + n].reshape(-1, 4), shape).reshape(n, K, 4))
        start += n
    image = to_device(np.repeat(np.arange(len(counts), dtype=np.int64), counts), xp)  # (R,) image of each RoI
    boxes = xp.concatenate(clipped, axis=0)[:, 1:].reshape(-1, 4)            # (R * (K-1), 4), background dropped
    scores = pred_scores[:, 1:].reshape(-1)
    labels = xp.broadcast_to(xp.arange(1, K, dtype=xp.int64)[None, :], (R, K - 1)).reshape(-1)
    image = xp.broadcast_to(image[:, None], (R, K - 1)).reshape(-1)
    # All images at once (3 host syncs on a GPU, whatever the batch size): the pairs above the score
    # threshold and of both sides >= min_size, one NMS whose categories are (image, class) pairs, then
    # the detections_per_img best of each image.
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    inds = xp.nonzero((scores > score_thresh) & (ws >= min_size) & (hs >= min_size))[0]
    boxes, scores, labels, image = boxes[inds], scores[inds], labels[inds], image[inds]
    keep = batched_nms(boxes, scores, image * K + labels, nms_thresh)        # by decreasing score
    keep = keep[xp.argsort(image[keep], kind="stable")]                      # grouped by image, still by score
    kept = to_host(xp.bincount(image[keep], minlength=len(counts))).tolist()  # per-image counts (shapes)
    out_boxes, out_scores, out_labels, start = [], [], [], 0
    for c in kept:
        k = keep[start:start + min(c, detections_per_img)]
        out_boxes.append(boxes[k])
        out_scores.append(scores[k])
        out_labels.append(labels[k])
        start += c
    return out_boxes, out_scores, out_labels

