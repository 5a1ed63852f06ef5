"""Chapter 05 solutions: anchor labels, the RPN box loss, the sampler's counts."""

import numpy as np


def anchor_labels(iou, fg_iou_thresh, bg_iou_thresh):
    best = iou.max(axis=0)                                          # (R,) best IoU of each anchor
    labels = np.full(iou.shape[1], -1.0)                            # in between: ignored
    labels[best >= fg_iou_thresh] = 1.0
    labels[best < bg_iou_thresh] = 0.0
    best_for_gt = iou.max(axis=1, keepdims=True)                    # (G, 1)
    labels[((iou == best_for_gt) & (best_for_gt > 0)).any(axis=0)] = 1.0   # low-quality matches, ties too
    return labels


def rpn_box_loss(pred, target, labels, beta):
    d = (pred - target)[labels == 1]                                # only positives regress
    ad = np.abs(d)
    per = np.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
    return float(per.sum() / max(len(labels), 1))                   # / all sampled anchors


def sample_counts(num_pos, num_neg, batch_size_per_image, positive_fraction):
    n_pos = min(num_pos, int(batch_size_per_image * positive_fraction))
    return n_pos, min(num_neg, batch_size_per_image - n_pos)        # negatives fill the rest
