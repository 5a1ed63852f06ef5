"""The whole Mask R-CNN: transform -> backbone (ResNet-FPN) -> RPN -> RoI heads -> post-processing.

Shapes:  images: list of N float (3, H_i, W_i) in [0, 1]; batch (N, 3, H, W) after the transform
         features: OrderedDict '0'..'3' (P2..P5), 'pool' (P6), each (N, 256, H/s, W/s)
         proposals: list of (R_i, 4) boxes per image, no gradient (the RPN's output is a constant
         for the heads: the stop-gradient of the paper's approximate joint training)
Training: model(images, targets) -> dict of the five losses, torchvision's names:
         loss_objectness, loss_rpn_box_reg (RPN), loss_classifier, loss_box_reg (box head), loss_mask
Eval:    model(images) -> per image {boxes (D, 4), labels (D,), scores (D,), masks (D, 1, H, W)
         probabilities}, in the original image's pixels (threshold masks at 0.5)
Names:   every module and parameter as torchvision's `maskrcnn_resnet50_fpn`, so its state dict
         loads unchanged (`backbone.*`, `rpn.head.*`, `roi_heads.box_head.fc6`, ...)
Chapter: nbs/11_mask_rcnn.ipynb    Paper: Mask R-CNN (He et al. 2017), Fig. 1 and Sec. 3
"""

from __future__ import annotations

import numpy as np

from .config import MaskRCNNConfig, with_overrides
from .fpn import resnet_fpn_backbone
from .module import Module
from .roi_heads import FEATMAP_NAMES, RoIHeads  # noqa: F401  (RoIHeads importable from model, as before)
from .rpn import RegionProposalNetwork
from .tape import Tensor, no_grad
from .transform import GeneralizedRCNNTransform, check_targets


class MaskRCNN(Module):
    """Mask R-CNN (He et al. 2017) on a ResNet-FPN backbone; torchvision's MaskRCNN interface.

    model.train(); losses = model(images, targets, rng=rng)   # dict of five scalar Tensors
    model.eval();  detections = model(images)                 # list of dicts of arrays
    `rng=`: every random choice (multi-scale size, anchor and RoI sampling, the mask-RoI subset)
    draws from it: one Generator, the images in turn; or a list of one Generator per image, each
    image drawing from its own (what makes a batch split over processes sample as the whole batch;
    see matching.per_image and distributed.py).
    `proposals=` (a list of (R_i, 4) arrays) replaces the RPN's proposals: for tests and for the
    torchvision parity check (the RPN still computes its losses in training).
    `loss_counts`, after a training forward: what each loss was a mean over (host ints; the sampled
    anchors, the sampled RoIs, the mask pixels), for distributed.global_losses.
    Chapter: nbs/11_mask_rcnn.ipynb
    """

    def __init__(self, config: MaskRCNNConfig | None = None, rng=None):
        super().__init__()
        cfg = self.config = config if config is not None else MaskRCNNConfig()
        rng = rng if rng is not None else np.random.default_rng()
        self.transform = GeneralizedRCNNTransform(cfg.transform)
        b = cfg.backbone
        self.backbone = resnet_fpn_backbone(b.name, norm=b.norm, trainable_layers=b.trainable_layers,
                                            returned_layers=b.returned_layers, out_channels=b.out_channels, rng=rng,
                                            base_width=b.base_width)
        self.rpn = RegionProposalNetwork(cfg.rpn, in_channels=b.out_channels, rng=rng)
        self.roi_heads = RoIHeads(cfg.num_classes, cfg.roi_heads, in_channels=b.out_channels, rng=rng)
        self.rng = rng   # sampling (RoIs, anchors, multi-scale) draws from here unless forward gets one
        self.loss_counts = {}

    def forward(self, images, targets=None, rng=None, proposals=None):
        rng = rng if rng is not None else self.rng
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if self.training:
            check_targets(images, targets, self.config.num_classes)
            return self._forward(images, targets, rng, proposals, original_sizes)
        with no_grad():
            return self._forward(images, None, rng, proposals, original_sizes)

    def _forward(self, images, targets, rng, proposals, original_sizes):
        batch, image_sizes, targets = self.transform(images, targets, rng=rng, training=self.training)
        features = self.backbone(Tensor(batch))                                       # P2..P6
        rpn_proposals, rpn_losses = self.rpn(batch, features, image_sizes, targets, rng=rng)
        if proposals is not None:
            proposals = [p.astype(batch.dtype, copy=False) for p in proposals]
        else:
            proposals = rpn_proposals           # plain arrays: no gradient flows back into the RPN
        detections, roi_losses = self.roi_heads(features, proposals, image_sizes, targets, rng=rng)
        if self.training:
            self.loss_counts = {**self.rpn.loss_counts, **self.roi_heads.loss_counts}
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, image_sizes, original_sizes)


# ------------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------------


def maskrcnn_resnet50_fpn(num_classes=91, norm="frozen_bn", rng=None, config=None, **overrides):
    """torchvision's `maskrcnn_resnet50_fpn(weights=None, num_classes=91)`, freshly initialised.

    norm: "frozen_bn" (for pretrained weights) | "group_norm" (training from scratch).
    overrides: any configuration field by name (`min_size=512`, `aligned=False`, ...), see config.py.
    Load torchvision's weights with `minimask.weights.load_maskrcnn_state(model, path)`.
    Chapter: nbs/11_mask_rcnn.ipynb
    """
    cfg = config if config is not None else MaskRCNNConfig()
    cfg = with_overrides(cfg, num_classes=num_classes, norm=norm, **overrides)
    return MaskRCNN(cfg, rng=rng)


def small_config(num_classes=4, backbone="resnet18", min_size=256, max_size=320, width=64, **overrides):
    """A small, fast configuration for tests, notebooks and training from scratch on a CPU.

    ResNet-18-FPN with group norm (all stages trained), `width` FPN channels, smaller images and
    fewer RoIs and proposals; everything else as the full model.
    """
    cfg = MaskRCNNConfig()
    rpn_fields = type(cfg.rpn).__dataclass_fields__
    rpn = {k: v for k, v in dict(pre_nms_top_n_train=600, post_nms_top_n_train=300, pre_nms_top_n_test=300,
                                 post_nms_top_n_test=150, batch_size_per_image=128).items() if k in rpn_fields}
    cfg = with_overrides(
        cfg, num_classes=num_classes, name=backbone, norm="group_norm", trainable_layers=5, out_channels=width,
        min_size=min_size, max_size=max_size, rpn=rpn,
        roi_heads=dict(representation_size=4 * width, mask_layers=(width,) * 4, mask_predictor_channels=width,
                       mask_mlp_dim=4 * width,
                       batch_size_per_image=128))
    return with_overrides(cfg, **overrides) if overrides else cfg


def maskrcnn_small(num_classes=4, rng=None, **overrides):
    """Mask R-CNN on `small_config(...)`: the model the training chapter trains from scratch."""
    return MaskRCNN(small_config(num_classes=num_classes, **overrides), rng=rng)


__all__ = ["MaskRCNN", "RoIHeads", "maskrcnn_resnet50_fpn", "maskrcnn_small", "small_config"]
