"""Benchmark: images/s of the data loader alone against images/s of the training step it feeds.

Usage:   python benchmarks/loader.py [--quick] [--batches 50] [--steps 3] [--only shapes,coco128]
Loader:  `minimask.data.DataLoader` over the dataset of each default run — the generated 128x128 shapes
         (`python -m minimask.train`) and coco128 (`--preset coco128`) — with num_workers 0, 1, 2 and
         flip_prob 0 and 0.5, batch size as the run's: read + decode (PNG/JPEG), masks decoded by
         pycocotools (polygons and RLE), the flip, batching. No model. Timed over `--batches` batches
         from a fresh iterator (thread start-up included), after one untimed pass that warms the OS file cache.
Step:    the run's model (built by `minimask.train.build_model` from the same configuration) in training
         mode on batches from the same loader: forward, the sum of the five losses, backward, gradient
         clipping, SGD; one untimed warm-up step, then the mean over `--steps` steps.
Reading: in training the loader's threads decode ahead while the step runs, so the loader costs nothing
         as long as it delivers images faster than the step consumes them; on 2 cores its threads still
         take some CPU from the step. Timings on a shared machine are noisy; run it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def loader_rate(dataset, batch_size, num_workers, flip_prob, n_batches):
    from minimask.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, flip_prob=flip_prob, seed=0, num_workers=num_workers)
    batches = loader.batches()
    t0 = time.perf_counter()
    images = 0
    for _ in range(n_batches):
        ims, _targets = next(batches)
        images += len(ims)
    dt = time.perf_counter() - t0
    batches.close()  # stops the prefetching threads
    return images / dt


def step_rate(cfg, dataset, n_steps):
    from minimask.builders import build_model, build_optimizer
    from minimask.data import DataLoader
    from minimask.optim import clip_grad_norm_

    rng = np.random.default_rng([cfg.seed, 1])
    model = build_model(cfg, dataset.num_classes, rng)
    model.train()
    opt, sched = build_optimizer(cfg, model)
    batches = DataLoader(dataset, batch_size=cfg.batch_size, flip_prob=cfg.flip_prob, seed=cfg.seed,
                         num_workers=0).batches()
    times, images = [], 0
    for i in range(n_steps + 1):  # the first step warms up (allocations, caches)
        ims, targets = next(batches)
        t0 = time.perf_counter()
        losses = model(ims, targets, rng=rng)
        total = sum(losses.values(), start=losses["loss_mask"] * 0.0)
        opt.zero_grad()
        total.backward()
        if cfg.clip_grad_norm:
            clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        opt.step()
        sched.step()
        if i:
            times.append(time.perf_counter() - t0)
            images += len(ims)
    return images / sum(times), model.num_parameters()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 batches, 1 step, shapes only unless --only says")
    p.add_argument("--batches", type=int, default=50, help="batches timed per loader setting")
    p.add_argument("--steps", type=int, default=3, help="training steps timed (after one warm-up step)")
    p.add_argument("--only", default=None, help="comma-separated: shapes, coco128 (default both)")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.steps = 10, 1
    only = (args.only or ("shapes" if args.quick else "shapes,coco128")).split(",")

    from minimask.train import build_dataset, config_from_args

    rows = []
    for name in only:
        if name == "shapes":
            tmp = tempfile.mkdtemp(prefix="minimask-bench-loader-")
            cfg = config_from_args(["--data-dir", tmp, "--output-dir", os.path.join(tmp, "run")])
            cfg = cfg.replace(num_train_images=max(200, cfg.batch_size * args.batches))
        elif name == "coco128":
            cfg = config_from_args(["--preset", "coco128", "--output-dir", tempfile.mkdtemp()])
        else:
            p.error(f"unknown dataset {name!r}: shapes | coco128")
        print(f"{name}: preparing data ...", flush=True)
        ds = build_dataset(cfg, cfg.train_split)
        loader_rate(ds, cfg.batch_size, 2, 0.0, min(args.batches, len(ds) // cfg.batch_size))  # warm file cache
        for workers in (0, 1, 2):
            for flip in (0.0, 0.5):
                r = loader_rate(ds, cfg.batch_size, workers, flip, args.batches)
                rows.append((name, f"loader, {workers} workers, flip {flip}", r))
                print(f"  {rows[-1][1]:<32} {r:8.1f} images/s", flush=True)
        r, n_params = step_rate(cfg, ds, args.steps)
        what = (f"train step: {cfg.backbone} width {cfg.width}, {n_params / 1e6:.1f} M params, "
                f"{cfg.min_size}-{cfg.max_size} px, batch {cfg.batch_size}")
        rows.append((name, what, r))
        print(f"  {what:<32} {r:8.2f} images/s", flush=True)

    print(f"\n== data loader vs training step, images/s ({os.cpu_count()} CPU cores, {args.batches} batches per "
          f"loader setting, {args.steps} timed steps)")
    print(f"{'dataset':<8} | {'what':<72} | {'images/s':>8}")
    for name, what, r in rows:
        print(f"{name:<8} | {what:<72} | {r:8.2f}")
    for name in only:
        step = [r for n, w, r in rows if n == name and w.startswith("train step")][0]
        slowest = min(r for n, w, r in rows if n == name and w.startswith("loader") and "0 workers" not in w)
        print(f"{name}: the slowest threaded loader setting delivers {slowest / step:.0f}x the images the step "
              f"consumes" + ("" if slowest > step else "  <-- the loader IS the bottleneck"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
