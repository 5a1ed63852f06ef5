"""Benchmark: the default training run, `python -m minimask.train`, on the CPU — segm AP against wall time.

Usage:   python benchmarks/train_shapes.py [--quick] [--marks 4,8,13] [--workdir DIR] [--keep] [TRAIN FLAGS...]
         Any flag this script does not know is passed to `python -m minimask.train` (e.g. --iterations 1500).
What:    `python -m minimask.train` with its defaults (plus the passed flags) runs as a subprocess in a fresh
         directory, timed from launch to exit: interpreter start, generating the shapes, training, the final
         COCOeval and the pictures — everything. The run also checkpoints every 10 iterations so the model can
         be scored at wall-clock marks afterwards: for a mark of m minutes, the last checkpoint whose time from
         launch (start-up offset + metrics.jsonl `time`) is at most m, evaluated on the full val split. That
         scoring happens after the run ends and is not counted in any time. (A checkpoint costs ~0.1 s to
         write, ~2% of the training time at this rate; the ones no mark needs are deleted as the run goes.)
Offset:  launch -> the moment training starts = mtime of the run's config.json (written just before the
         first batch) minus the launch time; it covers imports, data generation and model construction.
Memory:  peak resident set (ru_maxrss) of the training process.
Peer:    torchvision Mask R-CNN, tiny backbone (2.4 M parameters), 128x128 shapes, batch 4, SGD 0.02, from
         scratch, same machine: segm AP 0.46 / 0.64 / 0.68 after 4 / 8 / 13 minutes, 12.9 images/s, 2.3 GB.
Measured: (2026-11-22, quiet machine, AVX-512 OpenBLAS) segm AP 0.457 / 0.666 / 0.685 at 4 / 8 / 13 min, the
         run done in 10.3 min everything included, 9.8 images/s over the training loop, 0.29 GB.
--quick: a smoke test of this script (8 iterations on 32 images); marks at thirds of the run.
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

PEER = {"name": "torchvision Mask R-CNN, tiny backbone", "segm_AP": {4.0: 0.46, 8.0: 0.64, 13.0: 0.68},
        "images_per_s": 12.9, "peak_gb": 2.3}
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
    from minimask.evaluate import evaluate_model
    from minimask.train import load_checkpoint_model

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

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="unknown flags are passed to python -m minimask.train")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 iterations, marks at thirds of the run")
    p.add_argument("--marks", default=None, help="minutes from launch, comma-separated (default 4,8,13)")
    p.add_argument("--workdir", default=None, help="fresh folder for data and run (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (the run's pictures are always kept)")
    args, train_flags = p.parse_known_args(argv)

    from minimask.train import build_dataset, config_from_args

    if args.quick:
        train_flags = QUICK_FLAGS + train_flags
    work = Path(args.workdir or tempfile.mkdtemp(prefix="minimask-bench-shapes-")).resolve()
    if args.workdir and any(work.iterdir() if work.exists() else []):
        p.error(f"--workdir {work} is not empty: the benchmark times data generation, so it needs a fresh folder")
    run_dir, data_dir = work / "run", work / "shapes-data"
    given = set(train_flags)
    if "--output-dir" not in given:
        train_flags += ["--output-dir", str(run_dir)]
    if "--data-dir" not in given:
        train_flags += ["--data-dir", str(data_dir)]
    if "--checkpoint-every" not in given:
        train_flags += ["--checkpoint-every", "10"]
    cfg = config_from_args(train_flags)   # checks the flags before the long run starts
    run_dir = Path(cfg.output_dir)
    if cfg.checkpoint_every % cfg.log_every:
        print(f"note: --log-every {cfg.log_every} does not divide --checkpoint-every {cfg.checkpoint_every}; "
              "unlogged checkpoints are timed by their file time")
    marks_min = [float(m) for m in args.marks.split(",")] if args.marks else (None if args.quick else [4, 8, 13])

    res = run_training(train_flags, run_dir, marks_s=[60 * m for m in marks_min] if marks_min else None,
                       log_path=work / "train.log")
    if res["returncode"] != 0:
        return res["returncode"]
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    train_s = summary["train_minutes"] * 60
    images = summary["iterations"] * cfg.batch_size
    steps = sorted(r["step_time"] for r in rows if "step_time" in r)
    if marks_min is None:  # quick: thirds of the run
        marks_min = [res["wall_s"] / 60 * f for f in (1 / 3, 2 / 3, 1.0)]

    print("scoring checkpoints at the marks (not timed) ...", flush=True)
    val_set = build_dataset(cfg, cfg.val_split)
    scored = score_marks(run_dir, res["offset_s"], [60 * m for m in marks_min], val_set, cfg.batch_size,
                         launch=res["launch"])

    print(f"\n== python -m minimask.train {' '.join(train_flags)}")
    print(f"model {cfg.model} {cfg.backbone} width {cfg.width}, {cfg.image_size}x{cfg.image_size} shapes, "
          f"{cfg.num_train_images} train / {cfg.num_val_images} val images, batch {cfg.batch_size}, "
          f"lr {cfg.lr}, {cfg.iterations} iterations, {os.cpu_count()} CPU cores")
    print(f"{'minutes':>8} | {'iteration':>9} | {'segm AP':>7} | {'bbox AP':>7} | {'peer segm AP':>12}")
    for m_s, it, t, metrics in scored:
        peer = PEER["segm_AP"].get(round(m_s / 60, 3))
        seg = metrics["segm"]["AP"] if metrics else None
        box = metrics["bbox"]["AP"] if metrics else None
        print(f"{m_s / 60:8.2f} | {fmt(it, 'd'):>9} | {fmt(seg):>7} | {fmt(box):>7} | {fmt(peer):>12}"
              + (f"   (checkpoint at {t / 60:.2f} min)" if t is not None else "   (no checkpoint yet)"))
    print(f"final: iteration {summary['iterations']}, segm AP {summary['segm_AP']:.3f}, "
          f"bbox AP {summary['bbox_AP']:.3f}  (target segm AP >= 0.6 within 15 min of wall time)")
    print(f"wall time {res['wall_s'] / 60:.2f} min everything included (start-up + data {res['offset_s']:.0f} s, "
          f"training {train_s / 60:.2f} min, final evaluation and pictures "
          f"{(res['wall_s'] - res['offset_s'] - train_s):.0f} s)")
    if steps:
        med = steps[len(steps) // 2]
        print(f"throughput {images / train_s:.2f} images/s over the training loop "
              f"(median step {med:.2f} s = {cfg.batch_size / med:.2f} images/s)   peer {PEER['images_per_s']} images/s")
    print(f"peak memory (ru_maxrss of the training process) {res['peak_rss_mb'] / 1024:.2f} GB   "
          f"peer {PEER['peak_gb']} GB")
    print(f"run directory: {run_dir} (losses.png, predictions.png, eval/, train.log beside it)")
    if not args.keep:
        for ckpt in run_dir.glob("checkpoint_*.npz"):
            ckpt.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
