"""minimask: Mask R-CNN from scratch in NumPy, with CuPy and raw CUDA kernels for the GPU.

Read it chapter by chapter (nbs/), verify each stage (pytest), train it for real.
Public names follow torchvision, so every stage can be checked against it.
"""

from . import backend, conv, fast, fpn, init, layers, losses, optim, paths, resnet, tape, weights
from .anchors import AnchorGenerator
from .backend import get_array_module, make_rng, scatter_add, to_host
from .boxes import BoxCoder, box_area, box_iou, clip_boxes_to_image, decode_boxes, encode_boxes, remove_small_boxes
from .config import MaskRCNNConfig
from .conv import Conv2d, ConvTranspose2d, conv2d, conv_transpose2d
from .fpn import BackboneWithFPN, FeaturePyramidNetwork, resnet_fpn_backbone
from .layers import (
    Flatten,
    FrozenBatchNorm2d,
    GroupNorm,
    Linear,
    MaxPool2d,
    ReLU,
    concatenate,
    frozen_batch_norm,
    group_norm,
    interpolate,
    linear,
    max_pool2d,
    relu,
    sigmoid,
    softmax,
)
from .losses import binary_cross_entropy_with_logits, cross_entropy, smooth_l1_loss
from .matching import BalancedPositiveNegativeSampler, Matcher
from .model import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_small, small_config
from .module import Module, ModuleList, Parameter, Sequential, load_state_file, save_state_dict
from .nms import batched_nms, nms
from .optim import SGD, WarmupMultiStepLR, clip_grad_norm_
from .poolers import MultiScaleRoIAlign, multiscale_roi_align
from .resnet import resnet18, resnet34, resnet50, resnet101
from .roi_align import roi_align
from .roi_pool import roi_pool
from .rpn import RegionProposalNetwork, RPNConfig, RPNHead
from .tape import Tensor, no_grad

__version__ = "0.1.0"
