"""Region proposal network: objectness and box deltas per anchor, then proposals and the RPN losses.

Shapes:  N images, L levels (P2..P6), A anchors per cell, R = sum over levels of H_l * W_l * A
         head outputs per level: logits (N, A, H, W), deltas (N, 4A, H, W); flattened to
         objectness (N, R) and pred_bbox_deltas (N, R, 4), rows in the anchors' (H, W, A) order
Boxes:   (R, 4) float32, x1 y1 x2 y2 in pixels of the padded input batch
Names:   pred_* = network outputs, gt_* = targets, *_logits = before the sigmoid; module and
         parameter names as torchvision's (`rpn.head.conv.0.0.weight`, `head.cls_logits`, ...)
Losses:  loss_objectness = binary cross-entropy over the sampled anchors (mean);
         loss_rpn_box_reg = smooth L1 (beta 1/9) over the positives, summed, / number sampled
Chapter: nbs/05_rpn.ipynb    Paper: Faster R-CNN, Sec. 3.1; FPN, Sec. 4.1
"""

from __future__ import annotations

import numpy as np

from . import init
from .anchors import AnchorGenerator
from .backend import get_array_module, to_device, to_host
from .boxes import BoxCoder, clip_boxes_to_image
from .config import RPNConfig
from .conv import Conv2d
from .layers import ReLU, concatenate, gather_rows, mul, reshape, sigmoid_forward, transpose
from .losses import binary_cross_entropy_with_logits, smooth_l1_loss
from .matching import BalancedPositiveNegativeSampler, Matcher, label_anchors, sampled_indices
from .module import Module, Parameter, Sequential
from .nms import batched_nms
from .tape import Tensor


class RPNHead(Module):
    """3x3 conv + ReLU shared by all levels, then 1x1 convs to A logits and 4A deltas per cell.

    Parameters (torchvision's names): conv.0.0.weight (C, C, 3, 3), conv.0.0.bias, cls_logits.weight
    (A, C, 1, 1), cls_logits.bias, bbox_pred.weight (4A, C, 1, 1), bbox_pred.bias; all weights
    normal(std=0.01), biases 0, as torchvision. forward(list of (N, C, H_l, W_l)) -> (logits list,
    deltas list). Chapter: nbs/05_rpn.ipynb
    """

    def __init__(self, in_channels, num_anchors, rng=None):
        super().__init__()
        conv = Conv2d(in_channels, in_channels, 3, padding=1, rng=rng)
        self.conv = Sequential([Sequential([conv, ReLU()])])  # torchvision: Conv2dNormActivation
        self.cls_logits = Conv2d(in_channels, num_anchors, 1, rng=rng)
        self.bbox_pred = Conv2d(in_channels, num_anchors * 4, 1, rng=rng)
        for layer in (conv, self.cls_logits, self.bbox_pred):
            layer.weight = Parameter(init.normal(layer.weight.shape, std=0.01, rng=rng))
            layer.bias = Parameter(init.zeros(layer.bias.shape))

    def forward(self, features):
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)  # (N, C, H, W)
            logits.append(self.cls_logits(t))  # (N, A, H, W)
            deltas.append(self.bbox_pred(t))  # (N, 4A, H, W)
        return logits, deltas


def concat_box_prediction_layers(logits, deltas):
    """Per-level head outputs -> objectness (N, R) and pred_bbox_deltas (N, R, 4), on the tape.

    Each level's (N, A, H, W) becomes (N, H, W, A), and (N, 4A, H, W) becomes (N, H, W, A, 4), so
    row (y * W + x) * A + a is anchor a at cell (y, x): the order `AnchorGenerator` lays anchors
    in. torchvision returns the same rows flattened over images, (N * R, 1) and (N * R, 4).
    Chapter: nbs/05_rpn.ipynb
    """
    obj, reg = [], []
    for lg, dl in zip(logits, deltas, strict=True):
        n, a, h, w = lg.shape
        obj.append(reshape(transpose(lg, axes=(0, 2, 3, 1)), shape=(n, h * w * a)))
        d = reshape(dl, shape=(n, a, 4, h, w))
        reg.append(reshape(transpose(d, axes=(0, 3, 4, 1, 2)), shape=(n, h * w * a, 4)))
    return concatenate(*obj, axis=1), concatenate(*reg, axis=1)


def filter_proposals(proposals_fn, objectness, image_sizes, num_anchors_per_level, pre_nms_top_n,
                     post_nms_top_n, nms_thresh, score_thresh=0.0, min_size=1e-3):
    """Pick proposals from plain arrays (no tape): per level top-k, decode, clip, prune, NMS.

    proposals_fn: (image index, (k,) anchor indices) -> (k, 4) decoded boxes (decoding only the
                  picked anchors gives the same boxes as decoding all, for a fraction of the work)
    objectness:   (N, R) logits
    returns:      lists of (K_i, 4) boxes and (K_i,) sigmoid scores, best first, K_i <= post_nms_top_n
    Steps as torchvision's `RegionProposalNetwork.filter_proposals`: the pre_nms_top_n best logits
    of each level, boxes clipped to the image (its size before padding), boxes under `min_size`
    and scores under `score_thresh` removed, NMS within each level, the post_nms_top_n best kept.
    Chapter: nbs/05_rpn.ipynb
    """
    xp = get_array_module(objectness)
    n = objectness.shape[0]
    picks, levels = [], []
    start = 0
    for lvl, count in enumerate(num_anchors_per_level):
        ob = objectness[:, start:start + count]  # (N, R_l)
        k = min(pre_nms_top_n, count)
        top = xp.argsort(-ob, axis=1, kind="stable")[:, :k]  # (N, k) best first, ties by index
        picks.append(top + start)
        levels.append(xp.full((k,), lvl, dtype=xp.int64))
        start += count
    picks = xp.concatenate(picks, axis=1)  # (N, K) anchor indices
    levels = xp.concatenate(levels)  # (K,) level of each pick
    K = picks.shape[1]
    scores, boxes = [], []
    for i in range(n):  # decode and clip per image (its own size): device work, no host sync
        scores.append(sigmoid_forward(objectness[i, picks[i]])[0])  # (K,)
        boxes.append(clip_boxes_to_image(proposals_fn(i, picks[i]), image_sizes[i]))  # (K, 4)
    scores, boxes = xp.concatenate(scores), xp.concatenate(boxes)  # (N*K,), (N*K, 4) image after image
    # The rest for the whole batch at once (3 host syncs on a GPU, whatever N): remove_small_boxes and
    # the score threshold in one selection, then one NMS whose categories are (image, level) pairs, as
    # many separate NMS runs would be, then the post_nms_top_n best of each image.
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = xp.nonzero((ws >= min_size) & (hs >= min_size) & (scores >= score_thresh))[0]
    image = keep // K  # (M,) the image of each candidate
    boxes, scores = boxes[keep], scores[keep]
    keep = batched_nms(boxes, scores, image * len(num_anchors_per_level) + levels[keep % K], nms_thresh)
    image = image[keep]  # kept candidates by decreasing score over the batch
    keep = keep[xp.argsort(image, kind="stable")]  # grouped by image, each still by decreasing score
    counts = to_host(xp.bincount(image, minlength=n)).tolist()  # how many each image kept (a shape)
    final_boxes, final_scores, start = [], [], 0
    for c in counts:
        k = keep[start:start + min(c, post_nms_top_n)]
        final_boxes.append(boxes[k])
        final_scores.append(scores[k])
        start += c
    return final_boxes, final_scores


def rpn_losses(objectness, pred_bbox_deltas, labels, pos_idx, neg_idx, regression_targets, beta=1.0 / 9):
    """The two RPN losses on the tape, from flat (over images) sampled indices.

    objectness (N, R) and pred_bbox_deltas (N, R, 4) Tensors; labels (N * R,) in {1, 0, -1};
    pos_idx, neg_idx: sampled rows of the flattened (N * R) anchors; regression_targets (P, 4) for
    pos_idx. Returns (loss_objectness, loss_rpn_box_reg), both divided by the number sampled.
    Chapter: nbs/05_rpn.ipynb
    """
    xp = get_array_module(labels)
    sampled = xp.concatenate([pos_idx, neg_idx])  # (S,)
    flat_obj = reshape(objectness, shape=(-1,))  # (N * R,)
    flat_reg = reshape(pred_bbox_deltas, shape=(-1, 4))  # (N * R, 4)
    loss_objectness = binary_cross_entropy_with_logits(
        gather_rows(flat_obj, index=sampled), labels[sampled], reduction="mean")
    box_sum = smooth_l1_loss(gather_rows(flat_reg, index=pos_idx), regression_targets, beta=beta, reduction="sum")
    loss_box = mul(box_sum, 1.0 / max(int(sampled.shape[0]), 1))  # normalised by all sampled, as torchvision
    return loss_objectness, loss_box


class RegionProposalNetwork(Module):
    """torchvision's `RegionProposalNetwork`: head, anchors, proposals, and in training the losses.

    rpn(images, features, image_sizes, targets=None, rng=None) -> (proposals, losses)
      images:      the padded (N, 3, H, W) batch (or just its shape): anchors are laid on it
      features:    OrderedDict (or list) of L Tensors (N, C, H_l, W_l), finest first
      image_sizes: [(h, w)] per image before padding: proposals are clipped to them
      targets:     per image {"boxes": (G, 4), optional "iscrowd": (G,)}; needed in training
      rng:         NumPy Generator for the anchor sampling, or a list of one per image (default:
                   the one given at construction)
      proposals:   list of (K_i, 4) plain arrays, best first: computed outside the tape, so no
                   gradient flows from the box head back through the proposal coordinates
      losses:      {"loss_objectness", "loss_rpn_box_reg"} scalar Tensors in training, else {}
    After a training forward, `loss_counts` holds what each loss was divided by (the number of
    sampled anchors, a host int): distributed.py sums it over processes to normalise globally.
    Chapter: nbs/05_rpn.ipynb
    """

    def __init__(self, config=None, in_channels=256, rng=None):
        super().__init__()
        cfg = self.config = config if config is not None else RPNConfig()
        levels = len(cfg.anchor_sizes)
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                                                (tuple(cfg.aspect_ratios),) * levels)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location()[0], rng=rng)
        self.proposal_matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(cfg.batch_size_per_image, cfg.positive_fraction)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.rng = rng if rng is not None else np.random.default_rng()
        self.loss_counts = {}

    def pre_nms_top_n(self):
        return self.config.pre_nms_top_n_train if self.training else self.config.pre_nms_top_n_test

    def post_nms_top_n(self):
        return self.config.post_nms_top_n_train if self.training else self.config.post_nms_top_n_test

    def forward(self, images, features, image_sizes, targets=None, rng=None):
        features = list(features.values()) if hasattr(features, "values") else list(features)
        if len(features) != len(self.anchor_generator.cell_anchors):
            raise ValueError(f"{len(features)} feature maps for {len(self.anchor_generator.cell_anchors)} anchor "
                             f"levels (sizes {self.config.anchor_sizes})")
        batch_hw = tuple(images.shape[-2:]) if hasattr(images, "shape") else tuple(images[-2:])
        n = features[0].shape[0]
        if len(image_sizes) != n:
            raise ValueError(f"{len(image_sizes)} image sizes for a batch of {n} feature maps")
        if self.training and targets is None:
            raise ValueError("RegionProposalNetwork in training mode needs targets")
        logits, deltas = self.head(features)
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        xp = get_array_module(features[0].data if isinstance(features[0], Tensor) else features[0])
        anchors = self.anchor_generator(batch_hw, grid_sizes, xp)  # (R, 4)
        anchors = anchors.astype(logits[0].dtype, copy=False)
        num_anchors_per_level = [int(np.prod(lg.shape[1:])) for lg in logits]  # A * H * W per level
        objectness, pred_bbox_deltas = concat_box_prediction_layers(logits, deltas)  # (N, R), (N, R, 4)

        # Proposals from the arrays behind the Tensors: outside the tape, no gradient flows back
        # through the boxes (the paper's "approximate joint training").
        obj, reg = objectness.data, pred_bbox_deltas.data

        def decode(i, idx):
            return self.box_coder.decode_single(reg[i, idx], anchors[idx])

        boxes, _ = filter_proposals(decode, obj, image_sizes, num_anchors_per_level, self.pre_nms_top_n(),
                                    self.post_nms_top_n(), self.config.nms_thresh, self.config.score_thresh,
                                    self.config.min_box_size)
        losses = {}
        if self.training:
            losses = self.compute_loss(objectness, pred_bbox_deltas, anchors, targets,
                                       rng if rng is not None else self.rng)
        return boxes, losses

    def assign_targets_to_anchors(self, anchors, targets):
        """Per image: labels (R,) in {1, 0, -1} and the matched gt box (R, 4) of each anchor."""
        labels, matched = [], []
        for t in targets:
            gt = to_device(t["boxes"], get_array_module(anchors)) if t["boxes"] is not None else anchors[:0]
            lab, m = label_anchors(anchors, gt.reshape(-1, 4), self.proposal_matcher, t.get("iscrowd"),
                                   self.config.crowd_ioa_thresh)
            labels.append(lab)
            matched.append(m)
        return labels, matched

    def compute_loss(self, objectness, pred_bbox_deltas, anchors, targets, rng):
        """Label the anchors, sample 256 per image, and return the loss dict (tape Tensors)."""
        xp = get_array_module(anchors)
        num = anchors.shape[0]
        labels, matched = self.assign_targets_to_anchors(anchors, targets)
        picked = sampled_indices(self.fg_bg_sampler, labels, rng)  # per image (pos, neg) on the host
        pos_idx = to_device(np.concatenate([p + i * num for i, (p, _) in enumerate(picked)]), xp)  # flat
        neg_idx = to_device(np.concatenate([n + i * num for i, (_, n) in enumerate(picked)]), xp)
        matched = xp.concatenate(matched)  # (N * R, 4)
        flat_anchors = xp.tile(anchors, (len(targets), 1))  # (N * R, 4)
        # regression targets for the sampled positives only: the others are never read
        reg_targets = self.box_coder.encode_single(matched[pos_idx], flat_anchors[pos_idx])
        loss_objectness, loss_box = rpn_losses(objectness, pred_bbox_deltas, xp.concatenate(labels), pos_idx,
                                               neg_idx, reg_targets, beta=self.config.box_loss_beta)
        sampled = int(pos_idx.shape[0] + neg_idx.shape[0])   # both losses are / this (a shape: no sync)
        self.loss_counts = {"loss_objectness": sampled, "loss_rpn_box_reg": sampled}
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}


__all__ = ["RPNConfig", "RPNHead", "RegionProposalNetwork", "concat_box_prediction_layers", "filter_proposals",
           "rpn_losses"]
