"""Synthetic shapes: the embedded default dataset, written in COCO format by the package itself.

Each image holds a few squares, circles and triangles — overlapping, of varied sizes and colours,
on varied backgrounds. Later shapes are drawn over earlier ones, and each annotation's mask is the
*visible* part of its shape (as COCO annotates); shapes hidden too much are dropped.

Layout:  <root>/images/<split>/<id:06d>.png  and  <root>/annotations/instances_<split>.json
Masks:   COCO RLE (pycocotools), boxes [x, y, w, h] in pixels as COCO stores them
Classes: 1 square, 2 circle, 3 triangle (COCO category ids; 0 is background in the model)
Seeded:  the same (seed, split, count, size) always writes the same bytes; train and val use
         different streams of the same seed, so the splits never share an image.
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .errors import MinimaskError

CATEGORIES = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ShapesConfig:
    image_size: int = 128          # images are square, image_size x image_size pixels
    min_shapes: int = 1            # shapes drawn per image, uniform in [min_shapes, max_shapes]
    max_shapes: int = 4
    min_size: int = 16             # shape extent (square side, circle diameter, triangle box) in pixels
    max_size: int = 64
    min_visible: float = 0.4       # drop an instance whose visible area is below this fraction of its full area
    noise: float = 6.0             # std of per-pixel Gaussian noise added to the image (0-255 scale)


def _square(size, rng, hw):
    h, w = hw
    side = size
    x0 = rng.uniform(-0.15 * side, w - 0.85 * side)
    y0 = rng.uniform(-0.15 * side, h - 0.85 * side)
    theta = rng.uniform(0, np.pi / 2)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = x0 + side / 2, y0 + side / 2
    # rotate pixel centres into the square's frame; inside when both coordinates are within side/2
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    return (np.abs(u) <= side / 2) & (np.abs(v) <= side / 2)


def _circle(size, rng, hw):
    h, w = hw
    r = size / 2
    cx = rng.uniform(0.15 * r, w - 0.15 * r)
    cy = rng.uniform(0.15 * r, h - 0.15 * r)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _triangle(size, rng, hw):
    h, w = hw
    cx = rng.uniform(0.1 * size, w - 0.1 * size)
    cy = rng.uniform(0.1 * size, h - 0.1 * size)
    theta = rng.uniform(0, 2 * np.pi)
    r = size / np.sqrt(3)  # circumradius of an equilateral triangle with side `size`
    angles = theta + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    px, py = cx + r * np.cos(angles), cy + r * np.sin(angles)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = np.ones((h, w), bool)
    for i in range(3):  # counter-clockwise vertices: inside is left of every edge
        j = (i + 1) % 3
        cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
        inside &= cross >= 0
    return inside


_DRAW = {1: _square, 2: _circle, 3: _triangle}


def _background(rng, hw):
    """A colour gradient between two random colours, in float (h, w, 3) on the 0-255 scale."""
    h, w = hw
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _contrasting_colour(rng, under):
    """A random colour at least ~90 (Euclidean, 0-255 scale) from the mean colour it is drawn over."""
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - under) > 90:
            return c
    return 255.0 - under


def render_image(rng, cfg: ShapesConfig):
    """One image and its instances: (uint8 (H, W, 3), list of (category_id, bool (H, W) visible mask))."""
    hw = (cfg.image_size, cfg.image_size)
    img = _background(rng, hw)
    full_masks, cats = [], []
    for _ in range(int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))):
        cat = int(rng.integers(1, 4))
        size = rng.uniform(cfg.min_size, cfg.max_size)
        m = _DRAW[cat](size, rng, hw)
        if m.sum() < 16:
            continue
        colour = _contrasting_colour(rng, img[m].mean(axis=0))
        img[m] = colour
        full_masks.append(m)
        cats.append(cat)
    # visible part of each shape = its mask minus everything drawn after it
    instances = []
    covered = np.zeros(hw, bool)
    for cat, m in zip(reversed(cats), reversed(full_masks), strict=True):
        visible = m & ~covered
        covered |= m
        if visible.sum() >= cfg.min_visible * m.sum() and visible.sum() >= 16:
            instances.append((cat, visible))
    instances.reverse()
    img = img + rng.normal(0, cfg.noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), instances


def _atomic_write_text(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


MARKER = ".minimask_shapes"   # written first into a folder the generator fills, before any image


class NotShapesFolder(MinimaskError):
    """The generator was pointed at a folder it did not write (a user's dataset, say)."""


def _shapes_record(ann_path: Path):
    """The `minimask_shapes` record of an annotation file, or None (not ours, or unreadable)."""
    try:
        with open(ann_path) as f:
            doc = json.load(f)
        return doc.get("info", {}).get("minimask_shapes") if isinstance(doc, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def check_shapes_folder(root: Path):
    """Raise NotShapesFolder unless `root` is absent, empty, or written by this generator before:
    it holds the marker file, or annotation files carrying the `minimask_shapes` record (older versions)."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())) or (root / MARKER).is_file():
        return
    anns = sorted((root / "annotations").glob("*.json"))
    foreign = [p for p in anns if _shapes_record(p) is None]
    if root.is_dir() and anns and not foreign:
        return
    held = ", ".join(sorted(p.name for p in root.iterdir())[:6]) if root.is_dir() else "a file"
    why = f"{foreign[0]} has no minimask_shapes record" if foreign else f"it holds {held}"
    raise NotShapesFolder(
        f"{root}: not a folder of generated shapes ({why}); the shapes generator writes only into an empty "
        "folder or one it wrote before, so it leaves this one alone. For a COCO-format folder pass "
        "--dataset coco; for shapes choose an empty --data-dir.")


def generate_shapes(root, split="train", num_images=200, seed=0, config: ShapesConfig = ShapesConfig(),
                    overwrite=False):
    """Write (or reuse) a shapes split under `root`; returns the path of its instances JSON.

    An existing split is reused when its recorded parameters equal the requested ones, so
    repeated runs cost nothing; otherwise (or with overwrite=True) it is written again. Only ever
    into a folder that is empty or was written by this generator (`check_shapes_folder`).
    """
    root = Path(root)
    ann_path = root / "annotations" / f"instances_{split}.json"
    params = {"split": split, "num_images": num_images, "seed": seed, **asdict(config)}
    check_shapes_folder(root)
    if ann_path.exists():
        record = _shapes_record(ann_path)
        if record is None:
            raise NotShapesFolder(f"{ann_path}: exists and was not written by the shapes generator; left alone")
        if record == params and not overwrite:
            return ann_path
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by minimask.shapes.generate_shapes\n")
    stream = SPLIT_STREAMS.get(split, abs(hash(split)) % 1000 + 3)
    rng = np.random.default_rng([seed, stream])
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        img, instances = render_image(rng, config)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(img).save(img_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]})
        for cat, m in instances:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h], "iscrowd": 0,
            })
    doc = {
        "info": {"description": "minimask synthetic shapes", "minimask_shapes": params},
        "images": images, "annotations": annotations, "categories": CATEGORIES,
    }
    _atomic_write_text(ann_path, json.dumps(doc))
    return ann_path
