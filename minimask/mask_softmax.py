"""The multinomial mask loss of the paper's Table 2b: a per-pixel softmax over the classes, as FCNs for
semantic segmentation train, instead of Mask R-CNN's per-class sigmoid.

Shapes:  mask_logits (P, K, M, M), K channels incl. background channel 0 (the same predictor as
         the sigmoid loss; the sigmoid loss never reads channel 0); labels (P,) gt class of each
         positive RoI in 1..K-1; mask_targets (P, M, M) in [0, 1]
Loss:    every pixel (p, i, j) is one K-way classification: softmax over the K channels, target
         t = labels[p] where mask_targets[p, i, j] >= 0.5, else 0 (background);
         loss = mean over the P*M*M pixels of -log softmax(mask_logits[p, :, i, j])[t]
         = torch.nn.functional.cross_entropy(mask_logits, t). The classes now compete for each
         pixel: raising the square channel lowers the circle's. This is "multinomial" in the
         paper's sense (Sec. 3, "a per-pixel softmax and a multinomial cross-entropy loss ... masks
         across classes compete"). The background channel is what makes it a mask: a K-1-way
         softmax over the class channels alone would have no target outside the object, so it
         could not say where the object ends. Soft targets (mask_target_binarize=False) are
         thresholded at 0.5 here: a class index cannot be fractional.
Infer:   as a multinomial classifier is read (FCN semantic segmentation): a pixel belongs to a
         detection's mask when the detection's class wins the per-pixel softmax over the K channels,
         background included (argmax). Its class probability alone, thresholded at 0.5 like the
         sigmoid's, would drop every pixel where the class wins with, say, 0.4 against two rivals
         and background: on 3 shape classes after 500 iterations that left almost no mask at all
         (segm AP 0.4 and 0.0 against bbox AP 44 and 37), an artefact of the reading, not the loss.
Chapter: nbs/10_mask_head.ipynb    Paper: Mask R-CNN (He et al. 2017), Sec. 3 and Table 2b
"""

from __future__ import annotations

from .backend import get_array_module
from .layers import reshape, sum_all, transpose
from .losses import cross_entropy
from .mask_head import split_by_image


def softmax_mask_targets(labels, mask_targets):
    """(P, M, M) int64 class per pixel: labels[p] where the target is >= 0.5, background 0 elsewhere."""
    xp = get_array_module(mask_targets)
    return xp.where(mask_targets >= 0.5, labels.astype(xp.int64)[:, None, None], 0)


def maskrcnn_loss_softmax(mask_logits, labels, mask_targets):
    """Per-pixel softmax cross-entropy over the K channels (on the tape), averaged over P*M*M pixels.

    mask_logits (P, K, M, M) Tensor; labels (P,) int; mask_targets (P, M, M). No positives: 0.
    The same cross_entropy op as the box classifier, with every pixel a row.
    Chapter: nbs/10_mask_head.ipynb
    """
    P, K, M = mask_logits.shape[0], mask_logits.shape[1], mask_logits.shape[-1]
    if P == 0:
        return sum_all(mask_logits) * 0.0
    target = softmax_mask_targets(labels, mask_targets).reshape(-1)                     # (P*M*M,)
    pixels = reshape(transpose(mask_logits, axes=(0, 2, 3, 1)), shape=(P * M * M, K))   # a row per pixel
    return cross_entropy(pixels, target)


def maskrcnn_inference_softmax(mask_logits, labels):
    """Per image, where each detection's class wins the per-pixel softmax (argmax over the K channels,
    background channel 0 included): list of (D_i, 1, M, M) masks of 0.0 / 1.0, pasted like probabilities."""
    xp = get_array_module(mask_logits)
    lab = xp.concatenate(labels) if labels else xp.zeros((0,), dtype=xp.int64)
    wins = xp.argmax(mask_logits, axis=1) == lab[:, None, None]                  # (D, M, M): softmax is monotone
    return split_by_image(wins[:, None].astype(mask_logits.dtype), labels)       # (D, 1, M, M) per image
