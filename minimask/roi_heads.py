"""The RoI heads: sample proposals and build their box and mask targets, pool features, box head, mask head.

Shapes:  features: OrderedDict '0'..'3' (P2..P5), each (N, C, H/s, W/s); proposals: list of (R_i, 4)
Training: per image, proposals matched to gt boxes (IoU >= 0.5 foreground), 512 sampled at 1/4
         positive (box_head.select_training_samples); box targets = encoded gt boxes of the matches;
         mask targets = each positive's gt mask cropped to its proposal and resized to M x M
         (mask_head.project_masks_on_boxes), for every positive (the paper) or a random
         `mask_batch_size_per_image` of them; losses loss_classifier, loss_box_reg, loss_mask
Eval:    detections per image (box_head.postprocess_detections), then masks for the kept boxes
Chapter: nbs/09_box_head.ipynb, nbs/10_mask_head.ipynb    Paper: Mask R-CNN (He et al. 2017), Sec. 3
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_device, to_host
from .box_head import FastRCNNPredictor, TwoMLPHead, fastrcnn_loss, postprocess_detections, select_training_samples
from .boxes import BoxCoder
from .config import RoIHeadsConfig
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor, maskrcnn_inference, maskrcnn_loss, project_masks_on_boxes
from .mask_mlp import MaskRCNNMLPHead, MaskRCNNMLPPredictor
from .mask_softmax import maskrcnn_inference_softmax, maskrcnn_loss_softmax
from .matching import BalancedPositiveNegativeSampler, Matcher, per_image
from .module import Module
from .poolers import MultiScaleRoIAlign
from .tape import Tensor

FEATMAP_NAMES = ("0", "1", "2", "3")        # RoIs are pooled from P2..P5 (P6 feeds only the RPN)


def _split_crowd(target, num_crowd=None):
    """(boxes, labels, masks) of the non-crowd objects and the (C, 4) crowd boxes of one target.

    num_crowd: the number of crowd boxes if known (`_count_crowd` reads all images' at once).
    """
    xp = get_array_module(target["boxes"])
    boxes, labels, masks = target["boxes"], target["labels"], target.get("masks")
    crowd = target.get("iscrowd")
    if crowd is None:
        return boxes, labels, masks, boxes[:0]
    crowd = xp.asarray(crowd).astype(bool)
    num_crowd = int(crowd.sum()) if num_crowd is None else num_crowd   # a shape: a host sync on a GPU
    order = xp.argsort(crowd, kind="stable")  # the others first, each group in its order
    keep, crowd_idx = order[:order.shape[0] - num_crowd], order[order.shape[0] - num_crowd:]
    return boxes[keep], labels[keep], (None if masks is None else masks[keep]), boxes[crowd_idx]


def _count_crowd(targets):
    """Crowd boxes per target, as host ints: one copy for the whole batch (None: no iscrowd field)."""
    crowds = [t.get("iscrowd") for t in targets]
    if not crowds or any(c is None for c in crowds):
        return [None] * len(targets)
    xp = get_array_module(*crowds)
    return [int(n) for n in to_host(xp.stack([xp.asarray(c).astype(bool).sum() for c in crowds]))]


def _labels_and_matches_on_host(labels, matched_idxs):
    """[(labels_i, matched_idxs_i)] as host int64 arrays: every image's in one device->host copy.

    Which sampled RoIs are positive, and which gt each matched, decide shapes (the mask branch's
    RoIs, the gt masks it converts); reading them once per batch is one sync instead of two per image.
    """
    if not labels:
        return []
    xp = get_array_module(*labels)
    if xp is np:
        return [(lab, idx) for lab, idx in zip(labels, matched_idxs, strict=True)]
    both = to_host(xp.stack([xp.concatenate(labels).astype(xp.int64), xp.concatenate(matched_idxs).astype(xp.int64)]))
    out, start = [], 0
    for lab in labels:
        out.append((both[0, start:start + lab.shape[0]], both[1, start:start + lab.shape[0]]))
        start += lab.shape[0]
    return out


class RoIHeads(Module):
    """Box and mask branches on pooled RoIs (torchvision's RoIHeads, without keypoints).

    forward(features, proposals, image_shapes, targets=None, rng=None)
      training -> ([], {"loss_classifier", "loss_box_reg", "loss_mask"})
      eval     -> ([{"boxes", "labels", "scores", "masks" (D, 1, 28, 28)}], {})
    rng: a NumPy Generator, or a list of one per image (RoI sampling, the mask-RoI subset).
    After a training forward, `loss_counts` holds what each loss was divided by: the sampled RoIs
    (classifier, box regression) and the mask pixels P * M * M (host ints; see distributed.py).
    Chapter: nbs/09_box_head.ipynb, nbs/10_mask_head.ipynb
    """

    def __init__(self, num_classes, config: RoIHeadsConfig | None = None, in_channels=256, rng=None):
        super().__init__()
        cfg = self.config = config if config is not None else RoIHeadsConfig()
        pool_args = dict(sampling_ratio=cfg.sampling_ratio, aligned=cfg.aligned,
                         canonical_scale=cfg.canonical_scale, canonical_level=cfg.canonical_level,
                         method=cfg.roi_extractor, aggregation=cfg.roi_aggregation)
        # pool_level 0: the FPN level mapper over P2..P5; k: every RoI from P_k alone (Table 2d)
        featmaps = list(FEATMAP_NAMES) if cfg.pool_level == 0 else [FEATMAP_NAMES[cfg.pool_level - 2]]
        self.box_roi_pool = MultiScaleRoIAlign(featmaps, cfg.box_pool_size, **pool_args)
        self.box_head = TwoMLPHead(in_channels * cfg.box_pool_size ** 2, cfg.representation_size, rng=rng)
        self.box_predictor = FastRCNNPredictor(cfg.representation_size, num_classes, rng=rng)
        self.mask_roi_pool = MultiScaleRoIAlign(featmaps, cfg.mask_pool_size, **pool_args)
        if cfg.mask_head_type == "fcn":
            self.mask_head = MaskRCNNHeads(in_channels, cfg.mask_layers, cfg.mask_dilation, cfg.mask_norm, rng=rng)
            self.mask_predictor = MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_predictor_channels, num_classes,
                                                    rng=rng)
        else:   # "mlp" (Table 2e): fc layers on the flattened pooled features predict all K*M*M logits
            self.mask_head = MaskRCNNMLPHead(in_channels * cfg.mask_pool_size ** 2, cfg.mask_mlp_dim, rng=rng)
            self.mask_predictor = MaskRCNNMLPPredictor(cfg.mask_mlp_dim, num_classes, 2 * cfg.mask_pool_size,
                                                       rng=rng)
        self.num_classes = num_classes
        self.proposal_matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(cfg.batch_size_per_image, cfg.positive_fraction)
        self.box_coder = BoxCoder(cfg.bbox_reg_weights)
        self.loss_counts = {}

    def forward(self, features, proposals, image_shapes, targets=None, rng=None):
        cfg = self.config
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads in training mode needs targets")
            split = [_split_crowd(t, n) for t, n in zip(targets, _count_crowd(targets), strict=True)]
            gt_boxes = [s[0] for s in split]
            gt_labels = [s[1] for s in split]
            gt_masks = [s[2] for s in split]
            proposals, matched_idxs, labels, regression_targets = select_training_samples(
                proposals, gt_boxes, gt_labels, self.proposal_matcher, self.fg_bg_sampler, self.box_coder, rng,
                crowd_boxes=[s[3] for s in split], crowd_ioa_thresh=cfg.crowd_ioa_thresh)

        box_features = self.box_roi_pool(features, proposals, image_shapes)         # (R, C, 7, 7)
        box_features = self.box_head(box_features)                                  # (R, 1024)
        class_logits, box_regression = self.box_predictor(box_features)             # (R, K), (R, 4K)

        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets,
                                                          beta=cfg.box_loss_beta)
            # the mask branch sees only the positives, each with the gt it was matched to
            mask_props, mask_labels, mask_targets = [], [], []
            host = _labels_and_matches_on_host(labels, matched_idxs)   # all images in one copy
            for props, lab, idx, masks, (hlab, hidx), rng_i in zip(proposals, labels, matched_idxs, gt_masks, host,
                                                                   per_image(rng, len(proposals)), strict=True):
                xp = get_array_module(props)
                pos_h = np.flatnonzero(hlab > 0)
                if 0 < cfg.mask_batch_size_per_image < pos_h.size:   # a random subset, drawn on the host
                    pos_h = np.sort(rng_i.choice(pos_h, size=cfg.mask_batch_size_per_image, replace=False))
                pos = to_device(pos_h, xp)
                mask_props.append(props[pos])
                mask_labels.append(lab[pos])
                mask_targets.append(project_masks_on_boxes(masks, props[pos], idx[pos], 2 * cfg.mask_pool_size,
                                                           aligned=cfg.aligned, binarize=cfg.mask_target_binarize,
                                                           matched_idxs_host=hidx[pos_h]))
            xp = get_array_module(proposals[0])
            num_pos = sum(p.shape[0] for p in mask_props)
            mask_pixels = 0
            if num_pos == 0:   # nothing to learn a mask from: a zero that adds nothing
                loss_mask = Tensor(xp.zeros((), dtype=box_features.dtype))
            else:
                mask_features = self.mask_roi_pool(features, mask_props, image_shapes)   # (P, C, 14, 14)
                mask_logits = self.mask_predictor(self.mask_head(mask_features))     # (P, K, 28, 28)
                mask_loss = maskrcnn_loss if cfg.mask_loss == "sigmoid" else maskrcnn_loss_softmax   # Table 2b
                loss_mask = mask_loss(mask_logits, xp.concatenate(mask_labels), xp.concatenate(mask_targets))
                mask_pixels = num_pos * mask_logits.shape[-2] * mask_logits.shape[-1]   # the mean's P * M * M
            rois = sum(p.shape[0] for p in proposals)   # the box head's losses are / this
            self.loss_counts = {"loss_classifier": rois, "loss_box_reg": rois, "loss_mask": mask_pixels}
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}

        boxes, scores, labels = postprocess_detections(
            class_logits.data, box_regression.data, proposals, image_shapes, self.box_coder,
            score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
            min_size=cfg.min_box_size)
        M = 2 * cfg.mask_pool_size
        if sum(b.shape[0] for b in boxes):
            mask_features = self.mask_roi_pool(features, boxes, image_shapes)
            mask_logits = self.mask_predictor(self.mask_head(mask_features)).data        # (D, K, 28, 28)
            masks = (maskrcnn_inference if cfg.mask_loss == "sigmoid" else maskrcnn_inference_softmax)(mask_logits,
                                                                                                   labels)
        else:
            xp = get_array_module(class_logits.data)
            masks = [xp.zeros((0, 1, M, M), dtype=class_logits.dtype) for _ in boxes]
        result = [{"boxes": b, "labels": lab, "scores": s, "masks": m}
                  for b, lab, s, m in zip(boxes, labels, scores, masks, strict=True)]
        return result, {}
