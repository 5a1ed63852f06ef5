"""What a run is built from: the training configuration and its presets, the dataset, the model, and
a model rebuilt from a checkpoint. train.py, evaluate.py and predict.py import these from here, never
from each other (the checkpoint file format is checkpoint.py's, the run folder rundir.py's).

Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .backend import device_module
from .checkpoint import model_state, read_checkpoint
from .config import with_overrides
from .data import CocoDataset, coco_paths, shapes_paths
from .model import MaskRCNN, maskrcnn_resnet50_fpn, small_config
from .module import load_state_file
from .optim import SGD, WarmupMultiStepLR, param_groups
from .shapes import ShapesConfig, generate_shapes


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "shapes"              # shapes | coco128 | coco-r50-fpn-1x: sets the fields below first
    # --- data ------------------------------------------------------------------------------------
    dataset: str = "shapes"             # "shapes" (generated here) or "coco" (a COCO-format folder)
    data_dir: str = ""                  # shapes: where to generate them; coco: folder with the splits
    train_split: str = "train"          # split names: images in <data_dir>/<split> (coco) ...
    val_split: str = "val"              # ... annotations in <data_dir>/annotations/instances_<split>.json
    num_train_images: int = 1000        # shapes only: images generated for training
    num_val_images: int = 100           # shapes only: images generated for validation
    image_size: int = 128               # shapes only: side of the square images
    shape_min_size: int = 16            # shapes only: smallest shape extent in pixels (ShapesConfig.min_size)
    shape_max_size: int = 64            # shapes only: largest shape extent in pixels (ShapesConfig.max_size)
    flip_prob: float = 0.5              # horizontal-flip augmentation probability
    num_workers: int = 2                # background threads decoding images
    skip_bad: bool = False              # skip (and count) inconsistent annotations instead of stopping
    # --- model -----------------------------------------------------------------------------------
    model: str = "small"                # "small" (ResNet-18-FPN, group norm, narrow) | "resnet50_fpn"
    backbone: str = "resnet18"          # small model: resnet18 | resnet34 | resnet50 | resnet101
    width: int = 64                     # small model: FPN / head channels
    base_width: int = 32                # small model: trunk stem width (stage k: base_width * 2^k channels)
    norm: str = "group_norm"            # "group_norm" trains from scratch; "frozen_bn" needs pretrained weights
    min_size: int = 128                 # input transform: short side
    max_size: int = 128                 # input transform: cap on the long side
    mask_rois_per_image: int = 8        # positives per image training the mask head, at random (0: all; COCO presets)
    set: tuple = ()                     # extra model config overrides, "name=value" (see config.py, rpn.py)
    weights: str = ""                   # optional .npz of initial weights (torchvision names)
    # --- optimisation ----------------------------------------------------------------------------
    batch_size: int = 4                 # images per iteration
    lr: float = 0.02                    # base learning rate (after warmup)
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 1e-4          # L2 on weights; 0 on normalisation parameters
    iterations: int = 1600              # training iterations (batches)
    milestones: tuple = (1200, 1450)    # iterations where the LR is multiplied by `gamma`
    gamma: float = 0.1                  # LR decay factor at each milestone
    warmup_iters: int = 100             # linear warmup length
    warmup_factor: float = 0.001        # LR multiplier at iteration 0 of the warmup
    clip_grad_norm: float = 10.0        # clip the global gradient norm to this (0: off)
    time_limit_minutes: float = 0.0     # stop training after this much wall time (0: no limit), then evaluate
    # --- run -------------------------------------------------------------------------------------
    output_dir: str = ""                # run directory (default runs/<preset>, or the next free runs/<preset>-N)
    seed: int = 0                       # seeds the data order, augmentation, initialisation and sampling
    log_every: int = 10                 # iterations between metrics.jsonl lines
    checkpoint_every: int = 250         # iterations between checkpoints
    eval_limit: int = 0                 # evaluate on at most this many val images (0: all)
    device: str = "cpu"                 # "cpu" (NumPy) or "cuda" (CuPy; MINIMASK_FAKE_CUDA=1: the stand-in device)
    resume: bool = False                # continue from the newest checkpoint in output_dir, with its configuration
    overwrite: bool = False             # replace the run in output_dir (deletes only the files that run wrote)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


PRESETS = {
    "shapes": {},
    "coco128": dict(
        dataset="coco", data_dir="", train_split="train2017", val_split="train2017", model="small",
        backbone="resnet34", base_width=64, width=128, min_size=512, max_size=683, batch_size=2, lr=0.01,
        iterations=4000,
        milestones=(3000, 3600), warmup_iters=200, checkpoint_every=500, mask_rois_per_image=0,
    ),
    "coco-r50-fpn-1x": dict(
        dataset="coco", train_split="train2017", val_split="val2017", model="resnet50_fpn", norm="group_norm",
        min_size=800, max_size=1333, batch_size=16, lr=0.02, iterations=90000, milestones=(60000, 80000),
        warmup_iters=1000, checkpoint_every=5000, log_every=20, num_workers=4, mask_rois_per_image=0,
    ),
}


# --- building blocks ---------------------------------------------------------------------------------

def resolve_data_dir(cfg: TrainConfig) -> Path:
    """Where the data of this run lives (see the module docstring of paths.py for the lookup order)."""
    if cfg.dataset == "shapes":
        return Path(cfg.data_dir) if cfg.data_dir else Path("runs") / "shapes-data"
    if cfg.data_dir:
        return Path(cfg.data_dir)
    if cfg.preset == "coco128":
        return paths.coco128_dir()
    base = paths.data_dir()
    if base is None:
        raise FileNotFoundError(
            "COCO not found: pass --data-dir /path/to/coco (with train2017/, val2017/, annotations/) "
            f"or set {paths.ENV_VAR}; the README says how to get COCO"
        )
    return base / "coco"


def build_dataset(cfg: TrainConfig, split: str) -> CocoDataset:
    root = resolve_data_dir(cfg)
    if cfg.dataset == "shapes":
        n = cfg.num_train_images if split == cfg.train_split else cfg.num_val_images
        shapes = ShapesConfig(image_size=cfg.image_size, min_size=cfg.shape_min_size, max_size=cfg.shape_max_size)
        generate_shapes(root, split, num_images=n, seed=cfg.seed, config=shapes)
        return CocoDataset(*shapes_paths(root, split), skip_bad=cfg.skip_bad)
    image_dir, ann_file = coco_paths(root, split)
    return CocoDataset(image_dir, ann_file, skip_bad=cfg.skip_bad)


def parse_overrides(items):
    """("rpn_anchor_sizes=(16, 32)", ...) -> dict; values are Python literals (strings when not)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects name=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def build_optimizer(cfg: TrainConfig, model):
    """The run's SGD (momentum, weight decay except on norms and biases) and its warmup + step LR schedule."""
    optimizer = SGD(param_groups(model, cfg.weight_decay, 0.0), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = WarmupMultiStepLR(optimizer, list(cfg.milestones), gamma=cfg.gamma, warmup_iters=cfg.warmup_iters,
                                  warmup_factor=cfg.warmup_factor)
    return optimizer, scheduler


def build_model(cfg: TrainConfig, num_classes: int, rng):
    overrides = {"mask_batch_size_per_image": cfg.mask_rois_per_image, **parse_overrides(cfg.set)}
    if cfg.model == "small":
        mcfg = small_config(num_classes=num_classes, backbone=cfg.backbone, min_size=cfg.min_size,
                            max_size=cfg.max_size, width=cfg.width, norm=cfg.norm,
                            base_width=cfg.base_width, **overrides)
        if cfg.dataset == "shapes" and "anchor_sizes" not in overrides:
            # shapes are 16-64 px: anchors from 16 px up, one size per level P2..P6
            mcfg = with_overrides(mcfg, anchor_sizes=(16, 32, 64, 128, 256))
        model = MaskRCNN(mcfg, rng=rng)
    elif cfg.model == "resnet50_fpn":
        model = maskrcnn_resnet50_fpn(num_classes=num_classes, norm=cfg.norm, rng=rng, min_size=cfg.min_size,
                                      max_size=cfg.max_size, **overrides)
    else:
        raise ValueError(f"unknown model {cfg.model!r}: small | resnet50_fpn")
    if cfg.weights:
        model.load_state_dict(load_state_file(cfg.weights), strict=False)
    return model.to(device_module(cfg.device))   # parameters and buffers on the device, once


# --- checkpoints (the file format lives in checkpoint.py) ------------------------------------------

def load_checkpoint_model(path, device="cpu"):
    """(model in eval mode, TrainConfig) rebuilt from a checkpoint or model_final.npz written by this module.

    device: "cpu" | "cuda" (None: the device the run trained on). Checkpoints hold host arrays, so
    one written on a GPU loads on the CPU and the reverse.
    """
    state, meta = read_checkpoint(path)
    cfg = config_from_json(meta["config"])
    if device is not None:
        cfg = cfg.replace(device=device)
    model = build_model(cfg.replace(weights=""), len(meta["class_names"]), np.random.default_rng(0))
    model.load_state_dict(model_state(state, meta))
    model.class_names = meta["class_names"]
    return model.eval(), cfg


# --- config <-> flags / json ----------------------------------------------------------------------

def config_to_json(cfg):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_from_json(d):
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
    kw.setdefault("mask_rois_per_image", 0)   # runs written before the field existed trained every positive
    return TrainConfig(**kw)
