"""Predict: draw boxes, labels, scores and masks on images with a trained checkpoint.

    python -m minimask.predict IMAGE [IMAGE ...] --checkpoint runs/shapes/checkpoint_0002000.npz
writes <output-dir>/<image name>.png for each image (default output dir: predictions/ beside the
checkpoint). Images are read with Pillow (any format it reads), as RGB.
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from .backend import device_module, module_of, to_device, to_host
from .builders import load_checkpoint_model
from .coco_check import resize_problem
from .data import DataError, to_chw_float
from .errors import run_cli
from .fast.host import keep_freed_host_memory
from .rundir import output_folder
from .tape import no_grad
from .viz import draw_instances


def read_image(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise DataError(f"{path}: cannot read as an image ({e})") from None


def main(argv=None):

    p = argparse.ArgumentParser(prog="python -m minimask.predict", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", required=True, help="a checkpoint .npz written by minimask.train")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--output-dir", default=None, help="where the PNGs go (default: predictions/ beside the checkpoint)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (NumPy) or cuda (CuPy; MINIMASK_FAKE_CUDA=1: the stand-in device)")
    args = p.parse_args(argv)
    try:
        device_module(args.device)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep_freed_host_memory()
    model, _ = load_checkpoint_model(args.checkpoint, device=args.device)
    xp = module_of(model)
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / "predictions"
    outputs = output_folder(out_dir)   # never draws over a file minimask did not write
    for path in args.images:
        image = read_image(path)
        problem = resize_problem(*image.shape[:2], model.config.transform.min_size, model.config.transform.max_size)
        if problem:
            raise DataError(f"{path}: {problem}")
        with no_grad():
            det = model([to_device(to_chw_float(image), xp)])[0]     # one upload per image
        det = {k: to_host(v) for k, v in det.items()}                   # the detections come back to draw
        keep = det["scores"] >= args.score_thresh
        h, w = image.shape[:2]
        fig, ax = plt.subplots(figsize=(max(3, w / 100), max(3, h / 100)))
        draw_instances(ax, image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], det["masks"][keep],
                       model.class_names)
        out = outputs.file(Path(path).stem + ".png")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        print(f"{path}: {int(keep.sum())} detections -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
