"""Benchmark: a newcomer's default run, `python -m minimask.train`, timed from launch to exit — per seed and the mean.

Usage:   python benchmarks/train_shapes.py [--seeds 0,1] [--workdir DIR] [--quick] [--keep] [TRAIN FLAGS...]
         Any flag this script does not know is passed to `python -m minimask.train` (e.g. --iterations 1500).
What:    for each seed, `python -m minimask.train --seed S` with its defaults (plus the passed flags) runs as a
         subprocess in a fresh folder, timed from launch to exit: interpreter start, generating the shapes,
         training, the final COCOeval on the whole val split and the pictures — everything but the installation.
         Issue 17's target for this run: <= 8 minutes with segm AP >= 0.68, the mean of 2 seeds, on a quiet 2-core
         machine. (A seed also seeds the generated data, so each seed is a newcomer with other shapes.)
Peer:    the side-by-side comparison with torchvision's Mask R-CNN on the same data at equal training time is
         benchmarks/main_job_vs_peer.py; this script only times the whole default run.
Offset:  launch -> the moment training starts = mtime of the run's config.json (written just before the
         first batch) minus the launch time; it covers imports, data generation and model construction.
Memory:  peak resident set (ru_maxrss) of the training processes.
--quick: a smoke test of this script (8 iterations on 32 images, one seed).
Timings on a shared machine are noisy; run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from minimask.evaluate import evaluate_model
from minimask.train import config_from_args, load_checkpoint_model

TARGET_MINUTES, TARGET_SEGM_AP = 8.0, 0.68   # issue 17: the whole run, and its final segm AP (mean of 2 seeds)
QUICK_FLAGS = ["--iterations", "8", "--num-train-images", "32", "--num-val-images", "8", "--warmup-iters", "4",
               "--milestones", "6", "--checkpoint-every", "2", "--log-every", "2"]


# --- a timed training subprocess (shared with coco128_overfit.py) -------------------------------

class CheckpointPruner(threading.Thread):
    """Deletes checkpoints no mark can need while the run goes on (each one is ~100 MB).

    For each mark m it keeps the last checkpoint written at most m seconds after launch (by file
    mtime, which is later than the metrics time, so that checkpoint is certainly below the mark),
    every checkpoint written in the `grace` seconds after m (its metrics time may still be below
    m), and always the newest one (a later mark may pick it).
    """

    def __init__(self, run_dir: Path, launch: float, marks_s, grace=10.0, every=2.0):
        super().__init__(daemon=True)
        self.run_dir, self.launch, self.marks, self.grace, self.every = run_dir, launch, marks_s, grace, every
        self.stop = threading.Event()

    def prune(self):
        ckpts = []
        for p in self.run_dir.glob("checkpoint_*.npz"):
            try:
                ckpts.append((p.stat().st_mtime - self.launch, p))
            except FileNotFoundError:
                continue
        ckpts.sort()
        if not ckpts:
            return
        keep = {ckpts[-1][1]}
        for m in self.marks:
            below = [p for t, p in ckpts if t <= m]
            if below:
                keep.add(below[-1])
            keep.update(p for t, p in ckpts if m < t <= m + self.grace)
        for _, p in ckpts:
            if p not in keep:
                p.unlink(missing_ok=True)

    def run(self):
        while not self.stop.wait(self.every):
            self.prune()


def run_training(train_flags, run_dir: Path, marks_s=None, log_path=None, echo_every=30.0):
    """Run `python -m minimask.train *train_flags` (which must name --output-dir run_dir) to completion.

    Returns {"wall_s", "offset_s", "peak_rss_mb", "returncode", "launch" (epoch seconds)}; the run's
    stdout goes to `log_path`.
    """
    log_path = Path(log_path or run_dir.parent / "train.log")
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "minimask.train", *train_flags]
    print("running:", " ".join(cmd), flush=True)
    launch = time.time()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        pruner = CheckpointPruner(run_dir, launch, marks_s) if marks_s else None
        if pruner:
            pruner.start()
        last_echo = t0
        while proc.poll() is None:
            time.sleep(1.0)
            if echo_every and time.perf_counter() - last_echo >= echo_every:
                last_echo = time.perf_counter()
                rows = read_metrics(run_dir)
                it = rows[-1]["iteration"] if rows else 0
                print(f"  {(time.perf_counter() - t0) / 60:5.1f} min  iteration {it}", flush=True)
        wall = time.perf_counter() - t0
        if pruner:
            pruner.stop.set()
            pruner.join()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # KB on Linux -> MB
    cfg_file = run_dir / "config.json"
    offset = cfg_file.stat().st_mtime - launch if cfg_file.exists() else float("nan")
    if proc.returncode != 0:
        print(f"training exited with {proc.returncode}; last lines of {log_path}:\n"
              + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
    return {"wall_s": wall, "offset_s": offset, "peak_rss_mb": peak, "returncode": proc.returncode, "launch": launch}


def read_metrics(run_dir: Path):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return rows


def checkpoint_times(run_dir: Path, offset_s: float, launch=None):
    """[(seconds from launch, iteration, path)] for the checkpoints left in run_dir, oldest first."""
    times = {r["iteration"]: r["time"] for r in read_metrics(run_dir)}
    out = []
    for p in sorted(run_dir.glob("checkpoint_*.npz")):
        it = int(p.stem.split("_")[1])
        if it in times:
            t = offset_s + times[it]
        elif launch is not None:   # not logged at that iteration: its file time is an upper bound
            t = p.stat().st_mtime - launch
        else:
            continue
        out.append((t, it, p))
    return sorted(out)


def score_marks(run_dir: Path, offset_s: float, marks_s, dataset, batch_size, launch=None, progress=False):
    """For each mark: (mark_s, iteration, seconds from launch, {"bbox": {...}, "segm": {...}}) of the last
    checkpoint at or below it (None when no checkpoint was that early)."""

    ckpts = checkpoint_times(run_dir, offset_s, launch)
    cache, rows = {}, []
    for m in marks_s:
        below = [c for c in ckpts if c[0] <= m]
        if not below:
            rows.append((m, None, None, None))
            continue
        t, it, path = below[-1]
        if path not in cache:
            model, _ = load_checkpoint_model(path)
            cache[path] = evaluate_model(model, dataset, batch_size=batch_size, progress=progress, verbose=False)
        rows.append((m, it, t, cache[path]))
    return rows


def fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


# --- this benchmark --------------------------------------------------------------------------------

def run_seed(seed, work: Path, train_flags, keep=False):
    """One default run in work/seed<S>: {"seed", "wall_s", "offset_s", "train_s", "eval_s", "iterations",
    "segm_AP", "bbox_AP", "images_per_s", "peak_rss_mb"} (None when the run failed)."""
    run_dir, data_dir = work / f"seed{seed}" / "run", work / f"seed{seed}" / "shapes-data"
    flags = ["--seed", str(seed), "--output-dir", str(run_dir), "--data-dir", str(data_dir), *train_flags]
    cfg = config_from_args(flags)   # checks the flags before the long run starts
    res = run_training(flags, run_dir, log_path=work / f"seed{seed}" / "train.log")
    if res["returncode"] != 0:
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    train_s = summary["train_minutes"] * 60
    if not keep:
        for ckpt in run_dir.glob("checkpoint_*.npz"):
            ckpt.unlink()
    return {"seed": seed, "wall_s": res["wall_s"], "offset_s": res["offset_s"], "train_s": train_s,
            "eval_s": res["wall_s"] - res["offset_s"] - train_s, "iterations": summary["iterations"],
            "segm_AP": summary["segm_AP"], "bbox_AP": summary["bbox_AP"],
            "images_per_s": summary["iterations"] * cfg.batch_size / train_s, "peak_rss_mb": res["peak_rss_mb"],
            "run_dir": str(run_dir)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="unknown flags are passed to python -m minimask.train")
    p.add_argument("--seeds", default="0,1", help="one run per seed, one after the other (default 0,1)")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 iterations on 32 images, one seed")
    p.add_argument("--workdir", default=None, help="fresh folder for data and runs (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (the run's pictures are always kept)")
    args, train_flags = p.parse_known_args(argv)

    seeds = [int(x) for x in args.seeds.split(",")]
    if args.quick:
        train_flags, seeds = QUICK_FLAGS + train_flags, seeds[:1]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="minimask-bench-shapes-")).resolve()
    if args.workdir and any(work.iterdir() if work.exists() else []):
        p.error(f"--workdir {work} is not empty: the benchmark times data generation, so it needs a fresh folder")
    cfg = config_from_args(train_flags)
    results = []
    for seed in seeds:
        r = run_seed(seed, work, train_flags, keep=args.keep)
        if r is None:
            return 1
        results.append(r)
        (work / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\n== python -m minimask.train {' '.join(train_flags)}  (--seed S; {os.cpu_count()} CPU cores)")
    print(f"model {cfg.model} {cfg.backbone} width {cfg.width}, {cfg.image_size}x{cfg.image_size} shapes, "
          f"{cfg.num_train_images} train / {cfg.num_val_images} val images, batch {cfg.batch_size}, lr {cfg.lr}, "
          f"{cfg.iterations} iterations (milestones {','.join(map(str, cfg.milestones))}), "
          f"mask RoIs per image {cfg.mask_rois_per_image or 'all'}")
    print(f"{'seed':>4} | {'wall min':>8} | {'start+data s':>12} | {'train min':>9} | {'eval+pics s':>11} | "
          f"{'images/s':>8} | {'segm AP':>7} | {'bbox AP':>7} | {'peak GB':>7}")
    for r in results:
        print(f"{r['seed']:>4} | {r['wall_s'] / 60:8.2f} | {r['offset_s']:12.0f} | {r['train_s'] / 60:9.2f} | "
              f"{r['eval_s']:11.0f} | {r['images_per_s']:8.2f} | {r['segm_AP']:7.3f} | {r['bbox_AP']:7.3f} | "
              f"{r['peak_rss_mb'] / 1024:7.2f}")
    mean = lambda k: sum(r[k] for r in results) / len(results)  # noqa: E731
    print(f"mean | {mean('wall_s') / 60:8.2f} | {'':12} | {mean('train_s') / 60:9.2f} | {'':11} | "
          f"{mean('images_per_s'):8.2f} | {mean('segm_AP'):7.3f} | {mean('bbox_AP'):7.3f} |")
    print(f"target (issue 17): wall <= {TARGET_MINUTES:g} min and segm AP >= {TARGET_SEGM_AP} (mean of 2 seeds): "
          f"wall {'met' if mean('wall_s') / 60 <= TARGET_MINUTES else 'NOT met'}, "
          f"AP {'met' if mean('segm_AP') >= TARGET_SEGM_AP else 'NOT met'}")
    print(f"runs: {work} (seed*/run: losses.png, predictions.png, eval/; seed*/train.log; results.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
