"""Mask head: a small FCN on each positive RoI -> one 28x28 mask per class; its targets, loss and pasting.

Shapes:  P positive RoIs (training) or D detections (inference), K classes incl. background, M = 28
         pooled features (P, 256, 14, 14) -> four 3x3 conv + ReLU (P, 256, 14, 14)
         -> 2x2 stride-2 deconv + ReLU (P, 256, 28, 28) -> 1x1 conv -> mask_logits (P, K, 28, 28)
Targets: each positive's gt mask RoIAligned onto its *proposal* at M x M (the RoI the head saw),
         thresholded at 0.5 (Detectron2) or kept soft (torchvision): `binarize`
Loss:    per-pixel sigmoid BCE on the channel of the RoI's gt class only, averaged over P*M*M: the
         classes do not compete for a pixel (the paper's decoupling, Table 2b), the box head's
         classifier decides which class a detection is
Paste:   a detection's mask (its predicted class's channel, sigmoid) is resized bilinearly to its
         box (padded by one cell so the border fades out) and written into an image-sized canvas
Names:   as torchvision: mask_head.{i}.0 (convs), mask_predictor.conv5_mask / mask_fcn_logits
Chapter: nbs/10_mask_head.ipynb    Paper: Mask R-CNN Sec. 3 (Mask Representation, Table 2b), Fig. 4
"""

from __future__ import annotations

import numpy as np

from . import init
from .backend import get_array_module, to_host
from .conv import Conv2d, ConvTranspose2d
from .layers import GroupNorm, ReLU, gather_rows, relu, reshape, sigmoid_forward, sum_all
from .losses import binary_cross_entropy_with_logits
from .module import Module, Sequential
from .pooling import resize_bilinear
from .roi_align import roi_align_forward

# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------


def _relu_conv_init(conv, rng):
    """kaiming_normal(fan_out) weight and zero bias, as torchvision's mask head and predictor."""
    conv.weight.data = init.kaiming_normal(conv.weight.shape, mode="fan_out", rng=rng)
    if conv.bias is not None:
        conv.bias.data = init.zeros(conv.bias.shape)
    return conv


class MaskRCNNHeads(Sequential):
    """Four 3x3 conv (+ optional GroupNorm) + ReLU blocks: (P, C, 14, 14) -> (P, layers[-1], 14, 14).

    Block i is a Sequential [conv, relu] (keys `i.0.weight`), or [conv, norm, relu] with
    norm="group_norm" (torchvision's v2 layout: `i.0.weight`, `i.1.weight`).
    """

    def __init__(self, in_channels, layers=(256, 256, 256, 256), dilation=1, norm=None, rng=None):
        super().__init__()
        if norm not in (None, "group_norm"):
            raise ValueError(f"MaskRCNNHeads: norm must be None or 'group_norm', got {norm!r}")
        c = in_channels
        for width in layers:
            conv = _relu_conv_init(Conv2d(c, width, 3, padding=dilation, dilation=dilation, bias=norm is None,
                                          rng=rng), rng)
            block = [conv] + ([GroupNorm(min(32, width), width)] if norm else []) + [ReLU()]
            self.append(Sequential(block))
            c = width
        self.out_channels = c


class MaskRCNNPredictor(Module):
    """2x2 stride-2 deconv + ReLU, then a 1x1 conv to one logit map per class: (P, C, 14, 14) -> (P, K, 28, 28)."""

    def __init__(self, in_channels, dim_reduced, num_classes, rng=None):
        super().__init__()
        self.conv5_mask = _relu_conv_init(ConvTranspose2d(in_channels, dim_reduced, 2, stride=2, rng=rng), rng)
        self.mask_fcn_logits = _relu_conv_init(Conv2d(dim_reduced, num_classes, 1, rng=rng), rng)

    def forward(self, x):
        return self.mask_fcn_logits(relu(self.conv5_mask(x)))


# ------------------------------------------------------------------------------------------------
# targets and loss (training)
# ------------------------------------------------------------------------------------------------


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M, aligned=True, binarize=True, matched_idxs_host=None):
    """Mask targets (P, M, M): gt mask matched_idxs[p] RoIAligned onto boxes[p] at M x M.

    gt_masks (G, H, W) uint8/bool in image pixels; boxes (P, 4) the positive proposals;
    matched_idxs (P,) int. Sampling as torchvision's (adaptive: ceil(box size / M) points per bin).
    binarize: >= 0.5 -> 1 (Detectron2); otherwise the soft average is the target (torchvision).
    matched_idxs_host: the same indices on the host, when the caller has them (no device->host copy).
    Chapter: nbs/10_mask_head.ipynb
    """
    xp = get_array_module(boxes)
    P = boxes.shape[0]
    if P == 0:
        return xp.zeros((0, M, M), dtype=boxes.dtype)
    # only the matched masks are converted to float (a full-image float copy of every gt is wasteful)
    host = to_host(matched_idxs) if matched_idxs_host is None else matched_idxs_host
    used, local = np.unique(host, return_inverse=True)   # host: a few ints
    masks = gt_masks[xp.asarray(used)][:, None].astype(boxes.dtype)          # (U, 1, H, W)
    rois = xp.concatenate([xp.asarray(local.reshape(-1), dtype=boxes.dtype)[:, None], boxes], axis=1)  # (P, 5)
    targets = roi_align_forward(masks, rois, output_size=(M, M), spatial_scale=1.0, sampling_ratio=-1,
                                aligned=aligned)[0][:, 0]                    # (P, M, M)
    if binarize:
        targets = (targets >= 0.5).astype(boxes.dtype)
    return targets


def maskrcnn_loss(mask_logits, labels, mask_targets):
    """Sigmoid BCE between each RoI's gt-class logit map and its target, averaged (on the tape).

    mask_logits (P, K, M, M) Tensor; labels (P,) int in 1..K-1 (the gt class of each positive);
    mask_targets (P, M, M) in [0, 1]. No positives: 0 (times the logits, so the graph stays whole).
    Chapter: nbs/10_mask_head.ipynb
    """
    P, K, M = mask_logits.shape[0], mask_logits.shape[1], mask_logits.shape[-1]
    xp = get_array_module(mask_targets)
    if P == 0:
        return sum_all(mask_logits) * 0.0
    rows = xp.arange(P) * K + labels                                       # the gt class's channel
    picked = gather_rows(reshape(mask_logits, shape=(P * K, M, M)), rows)  # (P, M, M)
    return binary_cross_entropy_with_logits(picked, mask_targets.astype(picked.dtype, copy=False))


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------


def maskrcnn_inference(mask_logits, labels):
    """Per image, the sigmoid of each detection's predicted-class channel: list of (D_i, 1, M, M).

    mask_logits (D, K, M, M) array for all images; labels: list of (D_i,) predicted classes.
    """
    xp = get_array_module(mask_logits)
    lab = xp.concatenate(labels) if labels else xp.zeros((0,), dtype=xp.int64)
    logits = mask_logits[xp.arange(lab.shape[0]), lab][:, None]             # (D, 1, M, M)
    return split_by_image(sigmoid_forward(logits)[0], labels)


def split_by_image(x, labels):
    """Rows of x (D, ...) for all images -> list of (D_i, ...), D_i = len(labels[i])."""
    out, start = [], 0
    for lab_i in labels:
        out.append(x[start:start + lab_i.shape[0]])
        start += lab_i.shape[0]
    return out


def expand_boxes(boxes, scale):
    """Grow (D, 4) boxes about their centres by `scale` (float32 arithmetic as torchvision)."""
    xp = get_array_module(boxes)
    s = boxes.dtype.type(scale)
    half = boxes.dtype.type(0.5)
    w_half = (boxes[:, 2] - boxes[:, 0]) * half * s
    h_half = (boxes[:, 3] - boxes[:, 1]) * half * s
    x_c = (boxes[:, 2] + boxes[:, 0]) * half
    y_c = (boxes[:, 3] + boxes[:, 1]) * half
    return xp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


def paste_masks_in_image(masks, boxes, img_shape, padding=1):
    """Paste (D, 1, M, M) mask probabilities into (D, 1, H, W) canvases, as torchvision does.

    Each mask is zero-padded by `padding` cells and its box grown by (M + 2 padding) / M, so the
    padded map covers the grown box exactly; box corners are truncated to integers; the map is
    resized bilinearly to (y2 - y1 + 1, x2 - x1 + 1) pixels and copied in, clipped to the image.
    Outputs are probabilities: threshold at 0.5 for a binary mask.
    Chapter: nbs/10_mask_head.ipynb
    """
    xp = get_array_module(masks)
    H, W = int(img_shape[0]), int(img_shape[1])
    D = masks.shape[0]
    if xp is not np:   # the loop below reads box corners on the host; on a device, all at once
        return paste_masks_batched(masks, boxes, (H, W), padding)
    out = xp.zeros((D, 1, H, W), dtype=masks.dtype)
    if D == 0:
        return out
    M = masks.shape[-1]
    padded = xp.pad(masks[:, 0], ((0, 0), (padding, padding), (padding, padding)))   # (D, M+2, M+2)
    scale = float(M + 2 * padding) / M
    grown = to_host(expand_boxes(boxes.astype(masks.dtype, copy=False), scale)).astype(np.int64)  # trunc
    for d in range(D):
        x1, y1, x2, y2 = (int(v) for v in grown[d])
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        x0c, x1c = max(x1, 0), min(x2 + 1, W)
        y0c, y1c = max(y1, 0), min(y2 + 1, H)
        if x1c <= x0c or y1c <= y0c:
            continue                                                       # box entirely outside
        resized = resize_bilinear(padded[d], (h, w))                       # (h, w)
        out[d, 0, y0c:y1c, x0c:x1c] = resized[y0c - y1:y1c - y1, x0c - x1:x1c - x1]
    return out


PASTE_CHUNK = 16   # detections pasted per pass of `paste_masks_batched` (bounds its temporaries)


def _linear_weights_batched(start, length, n_in, n_out):
    """`transform._linear_weights(n_in, length[d])` for each box d, evaluated at output pixels
    p = 0..n_out-1 of the image (j = p - start[d] inside the box): (i0, i1, l0, l1, inside), each (D, n_out).
    Same float32/float64 steps as the host version, so the weights are bit-identical."""
    xp = get_array_module(start)
    j = xp.arange(n_out, dtype=xp.int64)[None, :] - start[:, None]                     # (D, n_out)
    scale = (np.float32(n_in) / length.astype(xp.float32)).astype(xp.float64)[:, None]  # (D, 1)
    src = (scale * (j.astype(xp.float64) + 0.5) - 0.5).astype(xp.float32)
    src = xp.maximum(src, np.float32(0))
    i0 = xp.minimum(xp.floor(src).astype(xp.int64), n_in - 1)
    l1 = xp.clip(src - i0.astype(xp.float32), np.float32(0), np.float32(1))
    i1 = i0 + (i0 < n_in - 1)
    inside = (j >= 0) & (j < length[:, None])
    return i0, i1, np.float32(1) - l1, l1, inside


def paste_masks_batched(masks, boxes, img_shape, padding=1):
    """`paste_masks_in_image` for all detections at once, with no host round trip (the device path).

    Each canvas pixel (y, x) inside detection d's grown, truncated box reads the bilinear weights
    that the per-box resize would use at (y - y1, x - x1); outside the box it is 0. Equal to the
    per-box loop bit for bit (tests/test_mask_head.py); works on NumPy and CuPy alike.
    """
    xp = get_array_module(masks)
    H, W = int(img_shape[0]), int(img_shape[1])
    D, M = masks.shape[0], masks.shape[-1]
    out = xp.zeros((D, 1, H, W), dtype=masks.dtype)
    if D == 0:
        return out
    dt = masks.dtype
    P = M + 2 * padding
    padded = xp.pad(masks[:, 0], ((0, 0), (padding, padding), (padding, padding)))   # (D, P, P)
    grown = expand_boxes(boxes.astype(dt, copy=False), float(P) / M).astype(xp.int64)   # (D, 4) truncated
    x1, y1 = grown[:, 0], grown[:, 1]
    w = xp.maximum(grown[:, 2] - x1 + 1, 1)                                               # (D,)
    h = xp.maximum(grown[:, 3] - y1 + 1, 1)
    for d0 in range(0, D, PASTE_CHUNK):                    # chunks of detections, no sync between
        sl = slice(d0, min(D, d0 + PASTE_CHUNK))
        h0, h1, lh0, lh1, in_y = _linear_weights_batched(y1[sl], h[sl], P, H)     # (d, H)
        w0, w1, lw0, lw1, in_x = _linear_weights_batched(x1[sl], w[sl], P, W)     # (d, W)
        rows = xp.arange(h0.shape[0])[:, None]
        top, bottom = padded[sl][rows, h0], padded[sl][rows, h1]                   # (d, H, P)
        r3 = rows[:, :, None]
        wi0, wi1 = w0[:, None, :], w1[:, None, :]                                  # (d, 1, W)
        lw0_, lw1_ = lw0.astype(dt)[:, None, :], lw1.astype(dt)[:, None, :]
        lh0_, lh1_ = lh0.astype(dt)[:, :, None], lh1.astype(dt)[:, :, None]
        yy = xp.arange(H)[None, :, None]
        val = lh0_ * (lw0_ * top[r3, yy, wi0] + lw1_ * top[r3, yy, wi1]) + \
            lh1_ * (lw0_ * bottom[r3, yy, wi0] + lw1_ * bottom[r3, yy, wi1])        # (d, H, W)
        out[sl, 0] = xp.where(in_y[:, :, None] & in_x[:, None, :], val, 0).astype(dt, copy=False)
    return out
