"""Chapter 15's example masks: every Table 2 arm of benchmarks/ablations.py on the same validation objects, one PNG.

Usage:   python benchmarks/ablations_examples.py [--results-dir benchmarks/results/ablations] [--seed 0] [--objects 6]
What:    loads each arm's trained weights, <results-dir>/runs/<arm>-s<seed>/run/model_final.npz (written by
         `python benchmarks/ablations.py`; *.npz are gitignored, never committed), regenerates that seed's val split
         of the benchmark's task variant (the images every arm of that seed was evaluated on: the seed draws the
         data) and draws, for the first --objects ground-truth objects of those images (at most two per image), a
         crop of the image around the object with its outline (top row), then each arm's mask of it (a row per arm).
Match:   an arm's mask of an object is its best-scoring detection of the object's class whose box overlaps the
         object's box with IoU >= 0.5 (COCO's loosest match), thresholded at 0.5 as COCOeval reads it; the tile
         gives its mask IoU with the object ("missed": no such detection; "empty, max p": a detection whose mask
         probabilities all stay below 0.5, with their maximum). The row label gives the mean IoU over the objects
         (a miss counts 0) — a handful of objects, so a picture, not a measurement: the APs are that.
Output:  <results-dir>/example_masks.png, palette PNG kept under 300 KB: it is committed, so chapter 15 shows it
         where the weights are absent (a fresh clone, CI).
Chapter: nbs/15_ablations.ipynb
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minimask.boxes import box_iou  # noqa: E402
from minimask.builders import build_dataset, load_checkpoint_model  # noqa: E402
from minimask.tape import no_grad  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "ablations"
MAX_BYTES = 300_000
CROP = 48            # px: the window around an object (objects of this task variant are 12-40 px)


def weights_path(results_dir: Path, arm: str, seed: int = 0) -> Path:
    return Path(results_dir) / "runs" / f"{arm}-s{seed}" / "run" / "model_final.npz"


def load_arms(results_dir: Path, arms, seed: int = 0):
    """{arm: model} for every arm whose weights exist, the TrainConfig of one of them, and the missing arms."""
    models, cfg, missing = {}, None, []
    for arm in arms:
        path = weights_path(results_dir, arm, seed)
        if path.exists():
            models[arm], cfg = load_checkpoint_model(path)
        else:
            missing.append(arm)
    return models, cfg, missing


def val_split(cfg, root: Path):
    """The seed's val images of the run's configuration, generated again into `root` (deterministic in the seed)."""
    return build_dataset(cfg.replace(data_dir=str(root)), cfg.val_split)


def pick_objects(dataset, n, per_image=2, min_pixels=100):
    """(image index, object index) of the first n objects with at least min_pixels visible, <= per_image each."""
    picked = []
    for i in range(len(dataset)):
        _, target = dataset[i]
        areas = target["masks"].reshape(len(target["masks"]), -1).sum(axis=1)
        picked += [(i, int(j)) for j in np.flatnonzero(areas >= min_pixels)[:per_image]]
        if len(picked) >= n:
            return picked[:n]
    return picked


def match(det, gt_box, gt_label, gt_mask):
    """(binary mask or None, mask IoU, score, peak) of the best-scoring detection of the object's class whose box
    overlaps the object's with IoU >= 0.5; peak is the largest value of its mask probabilities (a mask whose peak
    is below 0.5 is empty when thresholded). (None, 0, 0, 0): no such detection."""
    ok = det["labels"] == gt_label
    if ok.any():
        ok &= box_iou(det["boxes"], gt_box[None])[:, 0] >= 0.5
    if not ok.any():
        return None, 0.0, 0.0, 0.0
    k = int(np.flatnonzero(ok)[np.argmax(det["scores"][ok])])
    mask = det["masks"][k, 0] >= 0.5
    gt = gt_mask > 0.5
    iou = float((mask & gt).sum() / max((mask | gt).sum(), 1))
    return mask, iou, float(det["scores"][k]), float(det["masks"][k, 0].max())


def arm_masks(model, dataset, objects):
    """For each object: match() of this model's detections on its image (each image predicted once)."""
    dets = {}
    with no_grad():
        for i in sorted({i for i, _ in objects}):
            dets[i] = model([dataset[i][0]])[0]
    out = []
    for i, j in objects:
        target = dataset[i][1]
        out.append(match(dets[i], target["boxes"][j], target["labels"][j], target["masks"][j]))
    return out


def _window(box, size, crop=CROP):
    """(x0, y0) of a crop x crop window centred on the box, inside the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return [int(np.clip(round(c - crop / 2), 0, max(s - crop, 0))) for c, s in ((cx, size[1]), (cy, size[0]))]


def draw(dataset, objects, per_arm, labels=None):
    """The figure: top row the image crops with each object's outline, then a row per arm (its binary mask in
    white, the object's outline in red, the mask IoU above). per_arm: {arm: arm_masks(...)}."""
    import matplotlib.pyplot as plt

    labels = labels or {}
    rows, cols = 1 + len(per_arm), len(objects)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 + 1.05 * cols, 0.35 + 1.05 * rows), squeeze=False)
    names = dataset.class_names
    for c, (i, j) in enumerate(objects):
        image, target = dataset[i]
        gt = target["masks"][j] > 0.5
        x0, y0 = _window(target["boxes"][j], gt.shape)
        crop = (slice(y0, y0 + CROP), slice(x0, x0 + CROP))
        axes[0, c].imshow(image.transpose(1, 2, 0)[crop], interpolation="nearest")
        axes[0, c].set_title(f"val {i}: {names[target['labels'][j]]}", fontsize=7)
        for r, found in enumerate(per_arm.values(), start=1):
            mask, iou, score, peak = found[c]
            ax = axes[r, c]
            ax.imshow(np.zeros(gt[crop].shape) if mask is None else mask[crop], cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            title = "missed" if mask is None else (f"empty, max p {peak:.2f}" if not mask.any() else f"IoU {iou:.2f}")
            ax.set_title(title, fontsize=7, pad=2)
        for r in range(rows):
            axes[r, c].contour(gt[crop], levels=[0.5], colors="red", linewidths=0.8)
    for r, (arm, found) in enumerate(per_arm.items(), start=1):
        mean = np.mean([f[1] for f in found])
        axes[r, 0].set_ylabel(f"{labels.get(arm, arm)}\nmean IoU {mean:.2f}", rotation=0, ha="right", va="center",
                              fontsize=7)
    axes[0, 0].set_ylabel("image,\nobject outline", rotation=0, ha="right", va="center", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("each arm's mask (white, thresholded at 0.5) of the same val objects; red: the ground truth",
                 fontsize=8)
    fig.tight_layout()
    return fig


def save_small_png(fig, path: Path, max_bytes=MAX_BYTES):
    """Save as a palette PNG (128 colours) at the highest of a few resolutions that fits max_bytes."""
    from PIL import Image

    for dpi in (90, 75, 60, 50):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        buf.seek(0)
        out = io.BytesIO()
        Image.open(buf).convert("RGB").quantize(colors=128).save(out, format="PNG", optimize=True)
        if out.tell() <= max_bytes:
            Path(path).write_bytes(out.getvalue())
            return dpi, out.tell()
    raise RuntimeError(f"{path}: no resolution fits {max_bytes} bytes")


def summarise(per_arm):
    """{arm: (mean mask IoU, objects missed, masks empty at 0.5, mean peak probability of the matched masks)}."""
    out = {}
    for arm, found in per_arm.items():
        matched = [f for f in found if f[0] is not None]
        out[arm] = (float(np.mean([f[1] for f in found])), len(found) - len(matched),
                    sum(not f[0].any() for f in matched), float(np.mean([f[3] for f in matched])) if matched else 0.0)
    return out


def example_masks(results_dir=RESULTS_DIR, seed=0, n_objects=6, arms=None):
    """(figure, summarise(...) per arm, missing arms), or (None, {}, missing) when no arm's weights exist."""
    if arms is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("ablations", Path(__file__).with_name("ablations.py"))
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        arms = list(bench.ARMS)
    models, cfg, missing = load_arms(Path(results_dir), arms, seed)
    if not models:
        return None, {}, missing
    with tempfile.TemporaryDirectory(prefix="minimask-ablation-val-") as tmp:
        dataset = val_split(cfg, Path(tmp))
        objects = pick_objects(dataset, n_objects)
        per_arm = {arm: arm_masks(model, dataset, objects) for arm, model in models.items()}
        fig = draw(dataset, objects, per_arm)
    return fig, summarise(per_arm), missing


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="ablations.py's folder: results.json, runs/")
    p.add_argument("--seed", type=int, default=0, help="whose weights and val images")
    p.add_argument("--objects", type=int, default=6, help="how many val objects (columns)")
    p.add_argument("--out", default="", help="default: <results-dir>/example_masks.png")
    args = p.parse_args(argv)
    fig, summary, missing = example_masks(args.results_dir, args.seed, args.objects)
    if missing:
        print(f"no weights for {len(missing)} arms (not drawn): {', '.join(missing)}")
    if fig is None:
        sys.exit(f"no model_final.npz under {args.results_dir}/runs/*-s{args.seed}/run/: run benchmarks/ablations.py")
    out = Path(args.out or Path(args.results_dir) / "example_masks.png")
    dpi, size = save_small_png(fig, out)
    for arm, (iou, missed, empty, peak) in summary.items():
        print(f"{arm:18s} mean mask IoU {iou:.3f} over {args.objects} objects; missed {missed}, empty at 0.5 "
              f"{empty}; mean peak mask probability {peak:.2f}")
    print(f"wrote {out} ({size / 1e3:.0f} KB at {dpi} dpi)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
