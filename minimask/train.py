"""Train Mask R-CNN: `python -m minimask.train` (the main job).

With no arguments it generates the synthetic shapes dataset, trains a small ResNet-FPN Mask R-CNN
from scratch on the CPU, evaluates it with COCOeval on the val split (the 12 standard numbers for
bbox and segm) and draws pictures. Presets: `shapes` (default), `coco128` (../shared/data/coco128
or $MINIMASK_DATA/coco128), `coco-r50-fpn-1x` (full COCO: batch 16, LR 0.02, 90k iterations, steps
at 60k and 80k, warmup). Every field of `TrainConfig` is a `--flag` (`--help` lists them);
`--set name=value` changes any model configuration field (see config.py and rpn.py).

A run directory holds: config.json (the resolved configuration), metrics.jsonl (one line per
logged iteration: LR, each loss, time), checkpoints (model, optimizer, scheduler, iteration and
random-generator state in one .npz, written atomically), eval/ (COCO results and metrics) and
PNGs (loss curves, predictions on validation images). `--resume` continues from the newest
checkpoint exactly: an interrupted run resumed reproduces the uninterrupted run's losses.
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .backend import (
    describe_device_memory,
    device_module,
    keep_freed_host_memory,
    to_device,
    to_host,
    track_device_memory,
)
from .data import CocoDataset, DataLoader, coco_paths, shapes_paths
from .module import load_state_file, save_state_dict
from .optim import SGD, WarmupMultiStepLR, clip_grad_norm_, param_groups


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
    set: tuple = ()                     # extra model config overrides, "name=value" (see config.py, rpn.py)
    weights: str = ""                   # optional .npz of initial weights (torchvision names)
    # --- optimisation ----------------------------------------------------------------------------
    batch_size: int = 4                 # images per iteration
    lr: float = 0.02                    # base learning rate (after warmup)
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 1e-4          # L2 on weights; 0 on normalisation parameters
    iterations: int = 1500              # training iterations (batches)
    milestones: tuple = (1100, 1350)    # iterations where the LR is multiplied by `gamma`
    gamma: float = 0.1                  # LR decay factor at each milestone
    warmup_iters: int = 100             # linear warmup length
    warmup_factor: float = 0.001        # LR multiplier at iteration 0 of the warmup
    clip_grad_norm: float = 10.0        # clip the global gradient norm to this (0: off)
    time_limit_minutes: float = 0.0     # stop training after this much wall time (0: no limit), then evaluate
    # --- run -------------------------------------------------------------------------------------
    output_dir: str = ""                # run directory (default runs/<preset>)
    seed: int = 0                       # seeds the data order, augmentation, initialisation and sampling
    log_every: int = 10                 # iterations between metrics.jsonl lines
    checkpoint_every: int = 250         # iterations between checkpoints
    eval_limit: int = 0                 # evaluate on at most this many val images (0: all)
    device: str = "cpu"                 # "cpu" (NumPy) or "cuda" (CuPy; MINIMASK_FAKE_CUDA=1: the stand-in device)
    resume: bool = False                # continue from the newest checkpoint in output_dir

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


PRESETS = {
    "shapes": {},
    "coco128": dict(
        dataset="coco", data_dir="", train_split="train2017", val_split="train2017", model="small",
        backbone="resnet34", base_width=64, width=128, min_size=512, max_size=683, batch_size=2, lr=0.01,
        iterations=4000,
        milestones=(3000, 3600), warmup_iters=200, checkpoint_every=500,
    ),
    "coco-r50-fpn-1x": dict(
        dataset="coco", train_split="train2017", val_split="val2017", model="resnet50_fpn", norm="group_norm",
        min_size=800, max_size=1333, batch_size=16, lr=0.02, iterations=90000, milestones=(60000, 80000),
        warmup_iters=1000, checkpoint_every=5000, log_every=20, num_workers=4,
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
        from .shapes import ShapesConfig, generate_shapes

        n = cfg.num_train_images if split == cfg.train_split else cfg.num_val_images
        generate_shapes(root, split, num_images=n, seed=cfg.seed, config=ShapesConfig(image_size=cfg.image_size))
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


def build_model(cfg: TrainConfig, num_classes: int, rng):
    from .model import MaskRCNN, maskrcnn_resnet50_fpn, small_config

    overrides = parse_overrides(cfg.set)
    if cfg.model == "small":
        mcfg = small_config(num_classes=num_classes, backbone=cfg.backbone, min_size=cfg.min_size,
                            max_size=cfg.max_size, width=cfg.width, norm=cfg.norm,
                            base_width=cfg.base_width, **overrides)
        if cfg.dataset == "shapes" and "anchor_sizes" not in overrides:
            # shapes are 16-64 px: anchors from 16 px up, one size per level P2..P6
            from .config import with_overrides

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


# --- checkpoints -------------------------------------------------------------------------------------

def _flat(prefix, state):
    return {f"{prefix}.{k}": np.asarray(to_host(v)) for k, v in state.items()}


def _unflat(prefix, state):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def save_checkpoint(path, model, optimizer, scheduler, iteration, rng, cfg, class_names):
    """model.*, optimizer.*, scheduler.* arrays plus a JSON `meta` string, in one atomic .npz."""
    meta = {"iteration": iteration, "rng": rng.bit_generator.state, "config": config_to_json(cfg),
            "class_names": class_names, "format": "minimask-checkpoint-1"}
    state = {**_flat("model", model.state_dict()), **_flat("optimizer", optimizer.state_dict()),
             **_flat("scheduler", scheduler.state_dict()), "meta": np.array(json.dumps(meta))}
    save_state_dict(state, path)


def read_checkpoint(path):
    state = load_state_file(path)
    if "meta" not in state:
        raise ValueError(f"{path}: not a minimask training checkpoint (no 'meta' entry)")
    meta = json.loads(str(state["meta"]))
    return state, meta


def load_checkpoint_model(path, device="cpu"):
    """(model in eval mode, TrainConfig) rebuilt from a checkpoint written by this module.

    device: "cpu" | "cuda" (None: the device the run trained on). Checkpoints hold host arrays, so
    one written on a GPU loads on the CPU and the reverse.
    """
    state, meta = read_checkpoint(path)
    cfg = config_from_json(meta["config"])
    if device is not None:
        cfg = cfg.replace(device=device)
    model = build_model(cfg.replace(weights=""), len(meta["class_names"]), np.random.default_rng(0))
    model.load_state_dict(_unflat("model", state))
    model.class_names = meta["class_names"]
    return model.eval(), cfg


def latest_checkpoint(run_dir: Path):
    ckpts = sorted(run_dir.glob("checkpoint_*.npz"))
    return ckpts[-1] if ckpts else None


# --- config <-> flags / json ----------------------------------------------------------------------

def config_to_json(cfg):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_from_json(d):
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
    return TrainConfig(**kw)


def _field_help(name):
    """The comment after a field in this file's TrainConfig: the single source of the --help text."""
    src = Path(__file__).read_text().split("class TrainConfig", 1)[1].split("def replace", 1)[0]
    for line in src.splitlines():
        if line.strip().startswith(f"{name}:") and "#" in line:
            return line.split("#", 1)[1].strip()
    return ""


def make_parser():
    p = argparse.ArgumentParser(
        prog="python -m minimask.train", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_field_help(f.name)
                           + f" (default: {default})")
        elif f.name == "set":
            p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE", help=_field_help(f.name))
        elif isinstance(default, tuple):
            p.add_argument(flag, type=lambda s: tuple(int(v) for v in s.split(",") if v), default=None,
                           metavar="A,B", help=_field_help(f.name) + f" (default: {','.join(map(str, default))})")
        else:
            p.add_argument(flag, type=type(default), default=None,
                           choices=list(PRESETS) if f.name == "preset" else None,
                           help=_field_help(f.name) + f" (default: {default!r})")
    return p


def config_from_args(argv=None) -> TrainConfig:
    args = vars(make_parser().parse_args(argv))
    preset = args.get("preset") or TrainConfig.preset
    cfg = TrainConfig(preset=preset).replace(**PRESETS[preset])
    given = {k: (tuple(v) if k == "set" else v) for k, v in args.items() if v is not None}
    cfg = cfg.replace(**given)
    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(Path("runs") / cfg.preset))
    return cfg


# --- the loop ------------------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """Raised by `train(..., interrupt_at=k)`: simulates a run killed after iteration k (for tests)."""


def train(cfg: TrainConfig, progress=True, interrupt_at=None):
    """Run (or resume) training as configured; returns {"metrics": ..., "run_dir": ...}.

    `interrupt_at=k` stops right after iteration k as a crash would — no final checkpoint, no
    evaluation — so tests can check that `--resume` reproduces the uninterrupted run.
    """
    from tqdm import tqdm

    from .tape import Tensor

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dataset == "shapes" and not cfg.data_dir and not paths.data_dir():
        print("note: no COCO data found (../shared/data or $MINIMASK_DATA); training on generated shapes")
    train_set = build_dataset(cfg, cfg.train_split)
    val_set = build_dataset(cfg, cfg.val_split)
    class_names = train_set.class_names
    rng = np.random.default_rng([cfg.seed, 1])   # model init and in-model sampling
    xp = device_module(cfg.device)
    track_device_memory(xp)
    model = build_model(cfg, train_set.num_classes, rng)
    model.train()
    optimizer = SGD(param_groups(model, cfg.weight_decay, 0.0), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = WarmupMultiStepLR(optimizer, list(cfg.milestones), gamma=cfg.gamma, warmup_iters=cfg.warmup_iters,
                                  warmup_factor=cfg.warmup_factor)
    start = 0
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and ckpt is None:
        print(f"--resume: no checkpoint in {run_dir}, starting from scratch")
    if ckpt is not None:
        state, meta = read_checkpoint(ckpt)
        model.load_state_dict(_unflat("model", state))
        optimizer.load_state_dict(_unflat("optimizer", state))
        scheduler.load_state_dict(_unflat("scheduler", state))
        rng.bit_generator.state = meta["rng"]
        start = int(meta["iteration"])
        print(f"resumed from {ckpt} at iteration {start}")
    (run_dir / "config.json").write_text(json.dumps(config_to_json(cfg), indent=2))

    loader = DataLoader(train_set, batch_size=cfg.batch_size, flip_prob=cfg.flip_prob, seed=cfg.seed,
                        num_workers=cfg.num_workers)
    batches = loader.batches(start=start)
    metrics_path = run_dir / "metrics.jsonl"
    if start == 0 and metrics_path.exists():
        metrics_path.unlink()
    else:
        _truncate_metrics(metrics_path, start)
    t0 = time.perf_counter()
    it = start
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", disable=not progress, unit="it",
               dynamic_ncols=True)
    try:
        while it < cfg.iterations:
            if cfg.time_limit_minutes and time.perf_counter() - t0 > 60 * cfg.time_limit_minutes:
                print(f"\ntime limit of {cfg.time_limit_minutes} min reached at iteration {it}")
                break
            t_data = time.perf_counter()
            # one explicit upload per batch: every image and every target array (a no-op on the CPU)
            images, targets = to_device(next(batches), xp)
            t_step = time.perf_counter()
            losses = model(images, targets, rng=rng)
            # the loss values come back to the host together: one device->host copy per iteration
            host = to_host(xp.stack([v.data.reshape(()) for v in losses.values()]))
            values = {k: float(x) for k, x in zip(losses, host, strict=True)}
            total = sum(values.values())
            if not math.isfinite(total):
                raise NonFiniteLoss(
                    f"non-finite loss at iteration {it}: {values}; stopping. The last good checkpoint is "
                    f"{latest_checkpoint(run_dir) or '(none yet)'}; try a lower --lr or --clip-grad-norm"
                )
            loss = None
            for v in losses.values():
                loss = v if loss is None else loss + v
            optimizer.zero_grad()
            assert isinstance(loss, Tensor)
            loss.backward()
            grad_norm = float(to_host(clip_grad_norm_(model.parameters(), cfg.clip_grad_norm))) \
                if cfg.clip_grad_norm else float("nan")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            it += 1
            now = time.perf_counter()
            if it % cfg.log_every == 0 or it == cfg.iterations:
                record = {"iteration": it, "lr": lr, "loss": total, **values, "grad_norm": grad_norm,
                          "time": now - t0, "step_time": now - t_step, "data_time": t_step - t_data}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}", mask=f"{values.get('loss_mask', 0):.3f}", lr=f"{lr:.4f}")
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                save_checkpoint(run_dir / f"checkpoint_{it:07d}.npz", model, optimizer, scheduler, it, rng, cfg,
                                class_names)
            if interrupt_at is not None and it >= interrupt_at:
                raise Interrupted(f"simulated interruption after iteration {it}")
    finally:
        bar.close()
    if it % cfg.checkpoint_every != 0 and it != cfg.iterations:  # stopped by the time limit
        save_checkpoint(run_dir / f"checkpoint_{it:07d}.npz", model, optimizer, scheduler, it, rng, cfg,
                        class_names)
    train_time = time.perf_counter() - t0
    if xp is not np:
        print(describe_device_memory(xp))
    final = run_dir / "model_final.npz"
    save_state_dict(model.state_dict(), final)

    from .evaluate import evaluate_model
    from .viz import plot_losses, plot_predictions

    metrics = evaluate_model(model, val_set, batch_size=cfg.batch_size, out_dir=run_dir / "eval",
                             progress=progress, limit=cfg.eval_limit or None)
    plot_losses(metrics_path, run_dir / "losses.png")
    plot_predictions(model, val_set, run_dir / "predictions.png", class_names=class_names)
    summary = {"iterations": it, "train_minutes": train_time / 60,
               "bbox_AP": metrics["bbox"]["AP"], "segm_AP": metrics["segm"]["AP"]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntrained {it} iterations in {train_time / 60:.1f} min | bbox AP {summary['bbox_AP']:.3f} | "
          f"segm AP {summary['segm_AP']:.3f}\nrun directory: {run_dir} (losses.png, predictions.png, eval/)")
    return {"metrics": metrics, "run_dir": run_dir, "iterations": it}


def _truncate_metrics(path: Path, iteration: int):
    """On resume, drop metric lines past the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in keep))


def main(argv=None):
    cfg = config_from_args(argv)
    try:
        device_module(cfg.device)   # a missing CuPy or GPU is said now, not after the data is generated
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep_freed_host_memory()  # a process that trains reuses its temporaries' memory (see backend)
    os.environ.setdefault("PYTHONHASHSEED", str(cfg.seed))
    try:
        train(cfg)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
