"""Configuration of the whole model: frozen dataclasses, one per stage, with a comment on every field.

    MaskRCNNConfig
      ├─ transform:  TransformConfig   normalise, resize, pad (GeneralizedRCNNTransform)
      ├─ backbone:   BackboneConfig    ResNet-FPN trunk: depth, norm, frozen stages, FPN width
      ├─ rpn:        RPNConfig         anchors, matching, sampling, proposals (used by rpn.py)
      └─ roi_heads:  RoIHeadsConfig    RoI sampling, box and mask heads, losses, post-processing

Defaults are the paper's / torchvision's `maskrcnn_resnet50_fpn`, except where minimask adds a
switch (`aligned`, `mask_target_binarize`): those default to the Detectron2 behaviour, and
`torchvision_parity()` flips them to torchvision's. The paper's Table 2 ablations are switches of
RoIHeadsConfig (`roi_extractor`, `roi_aggregation`, `pool_level`, `mask_head_type`, `mask_loss`),
each defaulting to Mask R-CNN itself; `--set roi_extractor=roi_pool` on the training CLI.
No registry and no string lookups of classes: change a field with `dataclasses.replace` or pass
overrides to the builders in model.py.
Chapter: nbs/11_mask_rcnn.ipynb
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TransformConfig:
    min_size: int | tuple = 800          # short side after resizing; a tuple -> one drawn per image in training
    max_size: int = 1333                 # cap on the long side (the scale is reduced to respect it)
    image_mean: tuple = IMAGENET_MEAN    # per-channel mean subtracted from [0, 1] RGB images
    image_std: tuple = IMAGENET_STD      # per-channel std the centred image is divided by
    size_divisible: int = 32             # batch padded (bottom/right, zeros) to multiples of this: C5 is /32


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"               # resnet18 | resnet34 | resnet50 | resnet101
    norm: str = "frozen_bn"              # "frozen_bn" (pretrained statistics) | "group_norm" (from scratch)
    trainable_layers: int = 3            # stages trained, counted from layer4 (3: stem and layer1 frozen)
    returned_layers: tuple = (1, 2, 3, 4)  # layer1..layer4 = C2..C5 feeding the FPN
    out_channels: int = 256              # FPN width: every P level and every head input has this many channels
    base_width: int = 64                 # trunk stem width; stage k has base_width * 2^k planes (64 = torchvision)


@dataclass(frozen=True)
class RoIHeadsConfig:
    # --- RoI sampling (training) -------------------------------------------------------------
    fg_iou_thresh: float = 0.5           # proposal IoU >= this with a gt box -> foreground (its class)
    bg_iou_thresh: float = 0.5           # IoU < this -> background; between the two -> ignored
    batch_size_per_image: int = 512      # RoIs sampled per image for the box and mask losses
    positive_fraction: float = 0.25      # at most this share of the sample is foreground
    crowd_ioa_thresh: float = 0.7        # a RoI lying more than this inside a crowd box is no negative
    mask_batch_size_per_image: int = 0   # at most this many positives per image train the mask head (0: all)
    # --- pooling -----------------------------------------------------------------------------
    box_pool_size: int = 7               # RoIAlign output for the box head (7x7)
    mask_pool_size: int = 14             # RoIAlign output for the mask head (14x14 -> 28x28 masks)
    sampling_ratio: int = 2              # bilinear samples per bin side (torchvision: 2)
    aligned: bool = True                 # half-pixel shift in RoIAlign (Detectron2); False = torchvision
    canonical_scale: int = 224           # FPN level rule k = floor(k0 + log2(sqrt(area) / 224)) ...
    canonical_level: int = 4             # ... with k0 = 4 (FPN paper Eq. 1)
    roi_extractor: str = "roi_align"     # "roi_align" | "roi_pool" (rounded box, max) | "roi_warp" (rounded, bilinear)
    roi_aggregation: str = "avg"         # roi_align / roi_warp: a bin's samples "avg"-ed or "max"-ed; roi_pool: max
    pool_level: int = 0                  # 0: FPN level mapper; 2..5: every RoI from that one level (4: P4, 5: P5)
    # --- box head ----------------------------------------------------------------------------
    representation_size: int = 1024      # width of fc6 and fc7 (TwoMLPHead)
    bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0)  # (wx, wy, ww, wh) of the box coder
    box_loss_beta: float = 1.0 / 9       # smooth L1 transition point (torchvision: 1/9)
    # --- mask head ---------------------------------------------------------------------------
    mask_layers: tuple = (256, 256, 256, 256)  # channels of the 3x3 convs of the mask head
    mask_dilation: int = 1               # dilation of those convs
    mask_predictor_channels: int = 256   # channels of the 2x2 stride-2 deconvolution
    mask_norm: str | None = None         # None (torchvision v1) | "group_norm" after each mask conv
    mask_target_binarize: bool = True    # threshold RoIAligned gt masks at 0.5 (Detectron2); False: soft
    mask_head_type: str = "fcn"          # "fcn" (the convs above) | "mlp" (fc layers predict K*M*M: Table 2e)
    mask_mlp_dim: int = 1024             # "mlp" head: width of its two hidden fc layers (the paper: 1024)
    mask_loss: str = "sigmoid"           # "sigmoid" (per-class BCE) | "softmax" (per-pixel over K, Table 2b)
    # --- inference ---------------------------------------------------------------------------
    score_thresh: float = 0.05           # detections need a class score above this
    nms_thresh: float = 0.5              # class-wise NMS IoU threshold
    detections_per_img: int = 100        # keep the best this many per image
    min_box_size: float = 1e-2           # detections narrower or shorter than this (px) are dropped

    def __post_init__(self):   # the ablation switches (the paper's Table 2): a typo is an error, not the default
        for name, allowed in (("roi_extractor", ("roi_align", "roi_pool", "roi_warp")),
                              ("roi_aggregation", ("avg", "max")), ("pool_level", (0, 2, 3, 4, 5)),
                              ("mask_head_type", ("fcn", "mlp")), ("mask_loss", ("sigmoid", "softmax"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"RoIHeadsConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.mask_batch_size_per_image < 0:
            raise ValueError(f"RoIHeadsConfig.mask_batch_size_per_image must be >= 0 (0: all), "
                             f"got {self.mask_batch_size_per_image}")


@dataclass(frozen=True)
class RPNConfig:
    anchor_sizes: tuple = (32, 64, 128, 256, 512)  # anchor side sqrt(w * h) in px, one per level P2..P6
    aspect_ratios: tuple = (0.5, 1.0, 2.0)  # anchor h / w, the same at every level: A = 3
    fg_iou_thresh: float = 0.7  # anchor IoU >= this with a gt box -> positive
    bg_iou_thresh: float = 0.3  # IoU < this -> negative; in between -> ignored
    crowd_ioa_thresh: float = 0.0  # an anchor with more than this of its area in a crowd box is no negative
    batch_size_per_image: int = 256  # anchors sampled per image for the two losses
    positive_fraction: float = 0.5  # at most this share of the sample is positive
    pre_nms_top_n_train: int = 2000  # per level and image: best-scoring anchors decoded before NMS
    pre_nms_top_n_test: int = 1000  # the same at test time
    post_nms_top_n_train: int = 2000  # per image: proposals kept after NMS
    post_nms_top_n_test: int = 1000  # the same at test time
    nms_thresh: float = 0.7  # IoU above which NMS drops a proposal (within its level)
    score_thresh: float = 0.0  # proposals need sigmoid(objectness) >= this
    min_box_size: float = 1e-3  # proposals narrower or shorter than this (px, after clipping) go
    box_loss_beta: float = 1.0 / 9  # smooth L1 transition point of loss_rpn_box_reg


@dataclass(frozen=True)
class MaskRCNNConfig:
    num_classes: int = 91                # including background (COCO's 90 ids + 1, as torchvision)
    transform: TransformConfig = field(default_factory=TransformConfig)    # normalise / resize / pad
    backbone: BackboneConfig = field(default_factory=BackboneConfig)       # ResNet-FPN trunk
    rpn: RPNConfig = field(default_factory=RPNConfig)  # anchors, matching, sampling, proposals (rpn.py)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)      # box and mask heads


def torchvision_parity(config: MaskRCNNConfig) -> MaskRCNNConfig:
    """The same configuration with torchvision's choices: RoIAlign without the half-pixel shift
    and soft (not thresholded) mask targets. Loading torchvision weights wants this."""
    return replace(config, roi_heads=replace(config.roi_heads, aligned=False, mask_target_binarize=False))


def _sections():
    return {"transform": TransformConfig, "backbone": BackboneConfig, "rpn": RPNConfig,
            "roi_heads": RoIHeadsConfig}


def with_overrides(config: MaskRCNNConfig, **overrides) -> MaskRCNNConfig:
    """Apply flat keyword overrides, each naming a field of one section (or `num_classes`).

    `with_overrides(cfg, min_size=512, norm="group_norm", batch_size_per_image=128)`. A name found
    in two sections is an error (say which with a section dict: `rpn={"fg_iou_thresh": 0.6}`).
    """
    _SECTIONS = _sections()
    top, per_section = {}, {name: {} for name in _SECTIONS}
    for key, value in overrides.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"override {key}= must be a dict of {_SECTIONS[key].__name__} fields")
            per_section[key].update(value)
            continue
        if key == "num_classes":
            top[key] = value
            continue
        owners = [name for name, cls in _SECTIONS.items() if key in cls.__dataclass_fields__]
        if not owners:
            raise ValueError(f"unknown configuration field {key!r}")
        if len(owners) > 1:
            raise ValueError(f"field {key!r} exists in {owners}: pass it as {owners[0]}={{{key!r}: ...}}")
        per_section[owners[0]][key] = value
    changes = dict(top)
    for name, fields in per_section.items():
        if fields:
            unknown = set(fields) - set(_SECTIONS[name].__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown {_SECTIONS[name].__name__} fields {sorted(unknown)}")
            changes[name] = replace(getattr(config, name), **fields)
    return replace(config, **changes)
