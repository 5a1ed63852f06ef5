"""Benchmark: the Mask R-CNN paper's Table 2 ablations (2b, 2c, 2d, 2e), rerun on the shapes task.

Usage:   python benchmarks/ablations.py [--quick] [--seeds 0,1] [--out-dir DIR] [--only ARM,ARM] [--jobs 2]
What:    every arm (a set of RoIHeadsConfig switches, `--set name=value` of `python -m minimask.train`) trains
         the small model from scratch with the same schedule, once per seed, and is scored with COCOeval
         (segm AP, AP50, AP75) on the val split. Each finished (arm, seed) is written to results.json at once,
         so an interrupted run resumes where it stopped; one table per ablation is printed beside the paper's
         numbers, and one PNG per ablation shows each arm's seeds and mean beside the paper's value.
Variant: fixed before the first run, for every table: 128 x 128 shapes images with *small* objects,
         12-40 px (the default task draws 16-64 px), 1000 train / 100 val images per seed; the seed also draws
         the data, so the seed spread holds data and initialisation. 2c and 2d pool every RoI from ONE level
         (`pool_level`): P4 (stride 16: a 12-40 px object is 0.75-2.5 cells, where rounding a box to whole cells
         moves it by up to half an object) and P5 (stride 32: 0.4-1.25 cells), as the paper's C4 (stride 16)
         and C5 (stride 32) backbones pool from one map; 2b and 2e use the default FPN level mapper, as the
         paper's 2e (its 2b is C4: here FPN, so that the sigmoid arm is the default model).
Model:   the training CLI's `small` model (ResNet-18-FPN, group norm, width 64), batch 4, LR 0.02, warmup 50,
         500 iterations, LR x0.1 at 400 and 470, the mask head trained on 8 sampled positives per image (the
         shapes default; every arm alike, so no comparison changes: the paper's 512 sampled RoIs are the same
         kind of economy). With every positive a step costs twice as much (issue 17's profile) and only ~300
         iterations would fit. With 10 arms x 2 seeds at --jobs 2 this fits 90 minutes on a quiet
         2-core machine: measured 58 min (2026-11-29: 54.1 min for all arms, then 4.2 min to rerun the
         softmax arm after its masks were read by argmax); the script prints its own estimate too.
Criterion: for a paper direction "A beats B" and a metric, the direction is REPRODUCED when mean(A) - mean(B)
         exceeds both arms' seed ranges (max - min over seeds); REVERSED when mean(B) - mean(A) does;
         otherwise INCONCLUSIVE. Needs >= 2 seeds (with one seed the ranges are 0: --quick only).
Paper:   He et al. 2017, Mask R-CNN, Table 2, mask AP / AP50 / AP75 on COCO minival. 2b (ResNet-50-C4), 2c
         (ResNet-50-C4) and 2d (ResNet-50-C5) as recalled here. 2e (ResNet-50-FPN): MLP fc 1024-1024 31.5 / 53.7 /
         32.8, fc 1024-1024-1024 31.5 / 54.0 / 32.6, FCN 33.6 / 55.2 / 35.3; the AP75 row (32.8, 32.6, 35.3)
         is confirmed by a public excerpt of the paper's Table 2e. Issue 15's "30.3 vs 28.5-29.0" are not
         2e's numbers (30.3 is 2b's sigmoid row, on C4).
--jobs N: N (arm, seed) runs at a time, each in its own process with one BLAS thread. On 2 cores, 2 one-thread
         training processes move 1.5x the images per second of one two-thread process (measured for issue 17),
         so the full run uses --jobs 2. Each child writes runs/<arm>-s<seed>/result.json; only this process
         writes results.json. The AP of a run does not depend on N (the same seeds, the same schedule).
--quick: the same code path, every arm, 1 seed, 6 iterations on 16 images (8 val): a smoke test of this
         script, and the per-iteration times that the estimate of the full run is made from.
Estimate: per arm and seed, the median measured seconds per iteration x the iterations, plus the measured
         rest of a run (model build, evaluation, pictures) scaled by the val-image ratio (an upper bound: only
         the evaluation grows with it), plus the data generation per seed at the measured seconds per image.
Chapter: nbs/15_ablations.ipynb shows the committed results.json and table PNGs of the full run (the run's
         weights are not committed: benchmarks/ablations_examples.py draws the example masks from them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minimask.builders import build_dataset  # noqa: E402
from minimask.train import TrainConfig, train  # noqa: E402

VARIANT = dict(image_size=128, shape_min_size=12, shape_max_size=40, num_train_images=1000, num_val_images=100,
               min_size=128, max_size=128)
SCHEDULE = dict(batch_size=4, lr=0.02, iterations=500, milestones=(400, 470), warmup_iters=50,
                checkpoint_every=500, log_every=10,
                mask_rois_per_image=8)   # the mask loss on 8 sampled positives per image (the shapes default)
QUICK = dict(num_train_images=16, num_val_images=8, iterations=6, milestones=(5,), warmup_iters=2,
             checkpoint_every=6, log_every=1)
SEEDS = (0, 1)
BUDGET_MIN = 90.0

# arm -> the RoIHeadsConfig switches it sets (see minimask/config.py); arms are shared between tables
ARMS = {
    "fpn_sigmoid_fcn": {},                                                  # the default model (2b, 2e)
    "fpn_softmax": dict(mask_loss="softmax"),
    "fpn_mlp": dict(mask_head_type="mlp"),
    "p4_roi_pool": dict(pool_level=4, roi_extractor="roi_pool"),
    "p4_roi_warp_max": dict(pool_level=4, roi_extractor="roi_warp", roi_aggregation="max"),
    "p4_roi_warp_avg": dict(pool_level=4, roi_extractor="roi_warp"),
    "p4_roi_align_max": dict(pool_level=4, roi_aggregation="max"),
    "p4_roi_align_avg": dict(pool_level=4),
    "p5_roi_pool": dict(pool_level=5, roi_extractor="roi_pool"),
    "p5_roi_align_avg": dict(pool_level=5),
}

# table -> (title, rows: (label, arm, paper (AP, AP50, AP75) or None), directions: (better arm, worse arm))
TABLES = {
    "2b": ("2b: multinomial vs independent masks (paper: ResNet-50-C4; here: FPN mapper)",
           [("softmax", "fpn_softmax", (24.8, 44.1, 25.1)), ("sigmoid", "fpn_sigmoid_fcn", (30.3, 51.2, 31.5))],
           [("fpn_sigmoid_fcn", "fpn_softmax")]),
    "2c": ("2c: RoI extractors at stride 16 (paper: ResNet-50-C4; here: P4 alone)",
           [("RoIPool (max)", "p4_roi_pool", (26.9, 48.8, 26.4)),
            ("RoIWarp max", "p4_roi_warp_max", (27.2, 49.2, 27.1)),
            ("RoIWarp ave", "p4_roi_warp_avg", (27.1, 48.9, 27.1)),
            ("RoIAlign max", "p4_roi_align_max", (30.2, 51.0, 31.8)),
            ("RoIAlign ave", "p4_roi_align_avg", (30.3, 51.2, 31.5))],
           [("p4_roi_align_avg", "p4_roi_pool"), ("p4_roi_align_avg", "p4_roi_warp_avg"),
            ("p4_roi_align_max", "p4_roi_warp_max")]),
    "2d": ("2d: RoIPool vs RoIAlign, stride 16 vs 32 (paper: C5 rows; its stride-16 rows are 2c's C4)",
           [("P4 RoIPool", "p4_roi_pool", (26.9, 48.8, 26.4)), ("P4 RoIAlign", "p4_roi_align_avg", (30.3, 51.2, 31.5)),
            ("P5 RoIPool", "p5_roi_pool", (23.6, 46.5, 21.6)), ("P5 RoIAlign", "p5_roi_align_avg", (30.9, 51.8, 32.1))],
           [("p4_roi_align_avg", "p4_roi_pool"), ("p5_roi_align_avg", "p5_roi_pool")]),
    "2e": ("2e: mask head (paper: ResNet-50-FPN)",
           [("MLP fc 1024-1024-K*28^2", "fpn_mlp", (31.5, 53.7, 32.8)), ("FCN", "fpn_sigmoid_fcn", (33.6, 55.2, 35.3))],
           [("fpn_sigmoid_fcn", "fpn_mlp")]),
}
METRICS = ("AP", "AP50", "AP75")


def arms_in_use(only=None):
    return [a for a in ARMS if not only or a in only]


def arm_config(arm, seed, out_dir: Path, quick: bool) -> TrainConfig:
    """The training configuration of one (arm, seed): the variant, the schedule, the arm's switches."""
    sets = tuple(f"{k}={v}" for k, v in ARMS[arm].items())
    cfg = TrainConfig(**VARIANT, **SCHEDULE, set=sets, seed=seed, num_workers=1,
                      output_dir=str(out_dir / "runs" / f"{arm}-s{seed}" / "run"),
                      data_dir=str(out_dir / f"shapes-data-s{seed}"), overwrite=True)
    return cfg.replace(**QUICK) if quick else cfg


def prepare_data(seed, out_dir: Path, quick: bool):
    """Generate (or reuse) the seed's train and val images, as train() would: seconds it took, None if reused."""
    cfg = arm_config(next(iter(ARMS)), seed, out_dir, quick)
    existed = (Path(cfg.data_dir) / "annotations" / f"instances_{cfg.train_split}.json").exists()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        build_dataset(cfg, cfg.train_split), build_dataset(cfg, cfg.val_split)
    return None if existed else time.perf_counter() - t0


def run_arm(arm, seed, out_dir: Path, quick: bool) -> dict:
    """Train and evaluate one (arm, seed); its log goes to out_dir/runs/<arm>-s<seed>/log.txt."""
    cfg = arm_config(arm, seed, out_dir, quick)
    run_dir = Path(cfg.output_dir).parent
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = cfg.set
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log, contextlib.redirect_stdout(log):
        result = train(cfg, progress=False)
    total_s = time.perf_counter() - t0
    rows = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    train_s = summary["train_minutes"] * 60
    segm = result["metrics"]["segm"]
    return {"arm": arm, "seed": seed, "set": list(sets), "iterations": result["iterations"],
            "AP": 100 * segm["AP"], "AP50": 100 * segm["AP50"], "AP75": 100 * segm["AP75"],
            "bbox_AP": 100 * result["metrics"]["bbox"]["AP"],
            # the median logged iteration (step + data): robust to the first iteration's set-up and to a neighbour's
            # burst on a shared machine; train_s is the plain wall time of the loop
            "seconds_per_iteration": float(np.median([r["step_time"] + r["data_time"] for r in rows])),
            "train_s": train_s, "total_s": total_s, "other_s": total_s - train_s,
            "final_loss_mask": rows[-1]["loss_mask"]}


ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def run_arm_in_child(arm, seed, out_dir: Path, quick: bool) -> dict:
    """run_arm in a child process with one BLAS thread (--jobs > 1); its result comes back through a file."""
    result_path = out_dir / "runs" / f"{arm}-s{seed}" / "result.json"
    result_path.unlink(missing_ok=True)   # written by an earlier child of this script only
    cmd = [sys.executable, __file__, "--out-dir", str(out_dir), "--_one", f"{arm}/{seed}"]
    cmd += ["--quick"] if quick else []
    subprocess.run(cmd, env={**os.environ, **ONE_THREAD}, check=True)
    return json.loads(result_path.read_text())


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def save_results(path: Path, results: dict):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)   # atomic: a kill never leaves a half-written results file


def stats(results, arm, metric):
    vals = [r[metric] for r in results["runs"].values() if r["arm"] == arm]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.max(vals) - np.min(vals)), vals


def verdict(results, better, worse, metric):
    """The criterion of the docstring: REPRODUCED / REVERSED / INCONCLUSIVE, and the difference of the means."""
    a, b = stats(results, better, metric), stats(results, worse, metric)
    if a is None or b is None:
        return "missing", float("nan")
    diff = a[0] - b[0]
    if min(len(a[2]), len(b[2])) < 2:
        return "one seed", diff
    if diff > a[1] and diff > b[1]:
        return "REPRODUCED", diff
    if -diff > a[1] and -diff > b[1]:
        return "REVERSED", diff
    return "INCONCLUSIVE", diff


def print_tables(results, variant_note):
    for key, (title, rows, directions) in TABLES.items():
        print(f"\nTable {title}\n  task: {variant_note}")
        print(f"  {'row':26s} {'arm':18s} " + " ".join(f"{m:>17s}" for m in METRICS) + "   paper AP/AP50/AP75")
        for label, arm, paper in rows:
            cells = []
            for m in METRICS:
                s = stats(results, arm, m)
                cells.append(f"{s[0]:6.1f} (range {s[1]:4.1f})" if s else f"{'-':>17s}")
            print(f"  {label:26s} {arm:18s} " + " ".join(f"{c:>17s}" for c in cells)
                  + f"   {paper[0]:.1f} / {paper[1]:.1f} / {paper[2]:.1f}")
        for better, worse in directions:
            parts = [f"{m} {verdict(results, better, worse, m)[1]:+.1f} {verdict(results, better, worse, m)[0]}"
                     for m in METRICS]
            print(f"  {better} > {worse}: " + " | ".join(parts))
        if key == "2d":   # the paper: RoIAlign's gain grows with the stride (+7.3 AP at C5 vs +3.4 at C4)
            g4, g5 = verdict(results, "p4_roi_align_avg", "p4_roi_pool", "AP")[1], verdict(
                results, "p5_roi_align_avg", "p5_roi_pool", "AP")[1]
            print(f"  RoIAlign's AP gain over RoIPool: {g4:+.1f} at stride 16, {g5:+.1f} at stride 32 "
                  f"(paper: +3.4 at C4, +7.3 at C5; larger at the coarser stride: {g5 > g4})")


def plot_tables(results, out_dir: Path):
    """One PNG per table in out_dir: each arm's mean (bar) and seeds (dots) beside the paper's value, per metric."""
    from matplotlib.figure import Figure  # not pyplot: no backend chosen, nothing shown (chapter 15 calls this)

    paths = []
    for key, (title, rows, _) in TABLES.items():
        fig = Figure(figsize=(4.2 * len(METRICS), 3.6))
        axes = fig.subplots(1, len(METRICS))
        for ax, (j, m) in zip(axes, enumerate(METRICS), strict=True):
            x = np.arange(len(rows))
            for i, (_, arm, paper) in enumerate(rows):
                s = stats(results, arm, m)
                if s:
                    ax.bar(i - 0.2, s[0], 0.4, color="tab:blue", label="minimask (mean)" if i == 0 else None)
                    ax.plot([i - 0.2] * len(s[2]), s[2], "k.", label="seeds" if i == 0 else None)
                ax.bar(i + 0.2, paper[j], 0.4, color="tab:gray", alpha=0.6, label="paper" if i == 0 else None)
            ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
            ax.set_title(f"mask {m}")
        axes[0].legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = out_dir / f"table_{key}.png"
        fig.savefig(path, dpi=90)
        paths.append(path)
    return paths


def estimate_minutes(results, n_seeds, measured_val_images, jobs=1):
    """Minutes of the full run: per arm and seed, SCHEDULE iterations at the arm's measured seconds per
    iteration, plus its measured rest (model build, evaluation, pictures) scaled to VARIANT's val images,
    divided by the runs at a time (the times were measured with that many running); per seed, the data
    generation at the measured seconds per image."""
    total = 0.0
    for arm in ARMS:
        runs = [r for r in results["runs"].values() if r["arm"] == arm]
        if not runs:
            return None
        per_it = float(np.mean([r["seconds_per_iteration"] for r in runs]))
        other = float(np.mean([r["other_s"] for r in runs])) * VARIANT["num_val_images"] / measured_val_images
        total += n_seeds * (SCHEDULE["iterations"] * per_it + other) / jobs
    per_image = results.get("data_seconds_per_image")
    if per_image:
        total += n_seeds * per_image * (VARIANT["num_train_images"] + VARIANT["num_val_images"])
    return total / 60


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: every arm, 1 seed, 6 iterations")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (>= 2 for the criterion)")
    p.add_argument("--out-dir", default="",
                   help="default: benchmarks/results/ablations (--quick: runs/ablations-quick)")
    p.add_argument("--only", default="", help="comma-separated arms to run (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="(arm, seed) runs at a time, one BLAS thread each if > 1")
    p.add_argument("--_one", dest="one", default=None, help=argparse.SUPPRESS)   # ARM/SEED: a --jobs child
    args = p.parse_args(argv)
    seeds = (0,) if args.quick else tuple(int(s) for s in args.seeds.split(",") if s)
    out_dir = Path(args.out_dir or ("runs/ablations-quick" if args.quick else "benchmarks/results/ablations"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.one:   # a child of --jobs: one run, its result to a file, nothing else
        arm, seed = args.one.rsplit("/", 1)
        r = run_arm(arm, int(seed), out_dir, args.quick)
        (out_dir / "runs" / f"{arm}-s{seed}" / "result.json").write_text(json.dumps(r, indent=1))
        return 0
    path = out_dir / "results.json"
    results = load_results(path)
    schedule = {**SCHEDULE, **(QUICK if args.quick else {})}
    results.update(variant={**VARIANT, **({k: QUICK[k] for k in ("num_train_images", "num_val_images")}
                                          if args.quick else {})}, schedule=schedule, seeds=list(seeds))
    only = set(a for a in args.only.split(",") if a)
    t0 = time.perf_counter()
    schedule_images = QUICK if args.quick else VARIANT
    n_images = schedule_images["num_train_images"] + schedule_images["num_val_images"]
    for seed in seeds:
        seconds = prepare_data(seed, out_dir, args.quick)
        if seconds is not None:   # generated now: a measurement
            results["data_seconds_per_image"] = seconds / n_images
    todo = []
    for arm in arms_in_use(only):
        for seed in seeds:
            if f"{arm}/seed{seed}" in results["runs"]:
                print(f"{arm}/seed{seed}: cached in {path}")
            else:
                todo.append((arm, seed))

    def finished(arm, seed, r):
        results["runs"][f"{arm}/seed{seed}"] = r
        save_results(path, results)
        print(f"{arm}/seed{seed}: segm AP {r['AP']:.1f} AP50 {r['AP50']:.1f} AP75 {r['AP75']:.1f} | "
              f"{r['seconds_per_iteration']:.2f} s/it, {r['total_s']:.0f} s in all", flush=True)

    if args.jobs <= 1:
        for arm, seed in todo:
            finished(arm, seed, run_arm(arm, seed, out_dir, args.quick))
    else:
        with ThreadPoolExecutor(args.jobs) as pool:   # threads only wait on the children
            futures = {pool.submit(run_arm_in_child, arm, seed, out_dir, args.quick): (arm, seed) for arm, seed in todo}
            for future in as_completed(futures):
                finished(*futures[future], future.result())
    results["wall_minutes_this_invocation"] = (time.perf_counter() - t0) / 60
    results["jobs_this_invocation"] = args.jobs
    save_results(path, results)
    note = (f"shapes {VARIANT['image_size']}px, objects {VARIANT['shape_min_size']}-{VARIANT['shape_max_size']} px, "
            f"{schedule['iterations']} iterations x batch {schedule['batch_size']}, seeds {list(seeds)}")
    print_tables(results, note)
    for png in plot_tables(results, out_dir):
        print(f"wrote {png}")
    n_seeds = len(SEEDS if args.quick else seeds)
    est = estimate_minutes(results, n_seeds, schedule_images["num_val_images"], args.jobs)
    if est is not None:
        print(f"\nestimated full run ({len(ARMS)} arms x {n_seeds} seeds, --jobs {args.jobs}, "
              f"{SCHEDULE['iterations']} iterations each): {est:.0f} min (budget {BUDGET_MIN:.0f} min); "
              "from this machine's measured times — on a busy machine an over-estimate")
    print(f"results: {path}; this invocation took {results['wall_minutes_this_invocation']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
