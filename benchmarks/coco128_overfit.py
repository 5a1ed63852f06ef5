"""Benchmark: overfit 4 coco128 images from scratch — segm AP on those same images against wall time.

Usage:   python benchmarks/coco128_overfit.py [--quick] [--minutes 30] [--image-ids 9,25,30,34] [--marks ...]
                                              [--workdir DIR] [--keep] [TRAIN FLAGS...]
What:    a memorisation test of the whole pipeline on real data: can the model, trained from random
         initialisation, reproduce the boxes and masks of 4 real images (80 classes, polygons, crowds)?
Data:    a COCO folder holding only the chosen images: the same instances JSON restricted to their ids
         (all 80 categories kept, so the labels are coco128's), the images linked from coco128. It is both
         the train and the val split, so the final COCOeval scores exactly the training images.
Config:  `python -m minimask.train --dataset coco` with a small model (ResNet-18-FPN, group norm, width 64),
         short side 384 (long side at most 512), no flips, batch 2, SGD 0.02 with a 100-iteration warmup,
         LR / 10 at 75% and 90% of the iterations; the iterations are sized to the budget at ~1.2 s each on
         2 cores, and `--time-limit-minutes` stops training in time to evaluate within the budget.
Marks:   as in train_shapes.py: the last checkpoint at or below each mark (minutes from launch, start-up
         included), scored afterwards on the 4 images; scoring is not timed. Target: segm AP >= 0.5 within
         30 minutes on 2 cores.
Measured: (quiet machine, AVX-512 OpenBLAS) the 1425 iterations took 15 min at 0.63 s each: segm AP 0.81 /
         0.89 / 0.93 at 5 / 10 / 15 min (bbox AP 0.87 / 0.93 / 1.00), done with half the budget to spare.
Trial:   this configuration, scored by iteration (provisional, on a busy machine): segm AP 0.25 / 0.60 / 0.73 /
         0.78 / 0.80 after 100 / 200 / 300 / 400 / 500 iterations (bbox AP 0.54 / 0.71 / 0.83 / 0.84 / 0.81).
--quick: a smoke test of this script (10 iterations at 256 px).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the shared helpers beside this file
from train_shapes import fmt, read_metrics, run_training, score_marks

DEFAULT_IDS = (9, 25, 30, 34)   # the first four coco128 images: bowls, oranges, broccoli, giraffes, a vase, a zebra
SECONDS_PER_ITERATION = 1.2     # ResNet-18-FPN width 64, 384x512, batch 2, 2 cores: 1.2 s on a busy machine,
                                # 0.63 s quiet; sized for the slow case, so the run ends early when quiet


def write_subset(coco128: Path, image_ids, out: Path, split="train2017"):
    """A COCO folder `out` with only `image_ids` of coco128 (JSON filtered, images symlinked)."""
    doc = json.loads((coco128 / "annotations" / f"instances_{split}.json").read_text())
    ids = set(image_ids)
    missing = ids - {im["id"] for im in doc["images"]}
    if missing:
        raise SystemExit(f"image ids {sorted(missing)} are not in coco128")
    doc["images"] = [im for im in doc["images"] if im["id"] in ids]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    (out / split).mkdir(parents=True, exist_ok=True)
    for im in doc["images"]:
        link = out / split / im["file_name"]
        if not link.exists():
            os.symlink((coco128 / split / im["file_name"]).resolve(), link)
    return doc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="unknown flags are passed to python -m minimask.train")
    p.add_argument("--quick", action="store_true", help="smoke test: 10 iterations at 256 px")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-time budget, start-up and final evaluation "
                                                               "included")
    p.add_argument("--image-ids", default=",".join(map(str, DEFAULT_IDS)), help="coco128 image ids to overfit")
    p.add_argument("--marks", default=None, help="minutes from launch, comma-separated (default: sixths of "
                                                 "the budget)")
    p.add_argument("--workdir", default=None, help="folder for the subset and the run (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints")
    args, extra = p.parse_known_args(argv)

    from minimask import paths
    from minimask.data import CocoDataset, coco_paths
    from minimask.train import config_from_args

    ids = [int(i) for i in args.image_ids.split(",") if i]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="minimask-bench-coco128-")).resolve()
    data_dir, run_dir = work / "coco128-subset", work / "run"
    doc = write_subset(paths.coco128_dir(), ids, data_dir)
    # leave ~1.5 min of the budget for start-up, the final COCOeval and the pictures
    train_minutes = max(args.minutes - 1.5, 0.2)
    iterations = max(20, int(60 * train_minutes / SECONDS_PER_ITERATION))
    settings = {"dataset": "coco", "data-dir": data_dir, "train-split": "train2017", "val-split": "train2017",
                "model": "small", "backbone": "resnet18", "width": 64, "min-size": 384, "max-size": 512,
                "flip-prob": 0, "batch-size": 2, "lr": 0.02, "warmup-iters": 100, "iterations": iterations,
                "milestones": f"{int(0.75 * iterations)},{int(0.9 * iterations)}",
                "time-limit-minutes": f"{train_minutes:.2f}", "checkpoint-every": 10, "log-every": 10,
                "num-workers": 1, "output-dir": run_dir}
    if args.quick:
        settings.update({"iterations": 10, "milestones": 8, "warmup-iters": 5, "min-size": 256, "max-size": 342,
                         "checkpoint-every": 2, "log-every": 2})
    flags = [a for k, v in settings.items() for a in (f"--{k}", str(v))]
    flags += extra
    cfg = config_from_args(flags)
    marks_min = ([float(m) for m in args.marks.split(",")] if args.marks
                 else None if args.quick else [args.minutes * k / 6 for k in range(1, 7)])

    res = run_training(flags, Path(cfg.output_dir), marks_s=[60 * m for m in marks_min] if marks_min else None,
                       log_path=work / "train.log")
    if res["returncode"] != 0:
        return res["returncode"]
    run_dir = Path(cfg.output_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if marks_min is None:
        marks_min = [res["wall_s"] / 60 * f for f in (1 / 3, 2 / 3, 1.0)]
    print("scoring checkpoints at the marks (not timed) ...", flush=True)
    dataset = CocoDataset(*coco_paths(data_dir, "train2017"))
    scored = score_marks(run_dir, res["offset_s"], [60 * m for m in marks_min], dataset, cfg.batch_size,
                         launch=res["launch"])
    rows = read_metrics(run_dir)
    last = rows[-1] if rows else {}

    n_obj = len(doc["annotations"])
    n_crowd = sum(a.get("iscrowd", 0) for a in doc["annotations"])
    print(f"\n== overfitting coco128 images {ids} ({n_obj} annotations, {n_crowd} crowd), evaluated on the same "
          f"images\npython -m minimask.train {' '.join(flags)}")
    print(f"model {cfg.backbone} width {cfg.width}, {cfg.min_size}-{cfg.max_size} px, batch {cfg.batch_size}, "
          f"lr {cfg.lr}, {os.cpu_count()} CPU cores, budget {args.minutes:g} min")
    print(f"{'minutes':>8} | {'iteration':>9} | {'segm AP':>7} | {'bbox AP':>7} | {'segm AP50':>9}")
    for m_s, it, t, metrics in scored:
        seg = metrics["segm"]["AP"] if metrics else None
        box = metrics["bbox"]["AP"] if metrics else None
        seg50 = metrics["segm"]["AP50"] if metrics else None
        print(f"{m_s / 60:8.2f} | {fmt(it, 'd'):>9} | {fmt(seg):>7} | {fmt(box):>7} | {fmt(seg50):>9}"
              + (f"   (checkpoint at {t / 60:.2f} min)" if t is not None else "   (no checkpoint yet)"))
    print(f"final: iteration {summary['iterations']}, segm AP {summary['segm_AP']:.3f}, bbox AP "
          f"{summary['bbox_AP']:.3f}, last logged loss {last.get('loss', float('nan')):.3f}  "
          f"(target segm AP >= 0.5 within 30 min)")
    print(f"wall time {res['wall_s'] / 60:.2f} min everything included; training {summary['train_minutes']:.2f} min, "
          f"{summary['iterations'] * cfg.batch_size / (60 * summary['train_minutes']):.2f} images/s; "
          f"peak memory {res['peak_rss_mb'] / 1024:.2f} GB")
    print(f"run directory: {run_dir} (losses.png, predictions.png, eval/)")
    if not args.keep:
        for ckpt in run_dir.glob("checkpoint_*.npz"):
            ckpt.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
