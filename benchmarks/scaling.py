"""Benchmark: data-parallel scaling — CPU ranks measured here, and a model of full COCO on 8 GPUs.

Usage:   python benchmarks/scaling.py [--ranks 1,2] [--steps 10] [--warmup 2] [--quick] [TRAIN FLAGS...]
         (TRAIN FLAGS as `python -m minimask.train`'s; default: the shapes run's model and batch of 4;
         --quick: tiny images and model, 2 steps after 1, for a smoke test; its timings mean nothing)
         --gpu-step-seconds S: a measured one-GPU step time (2 images) for the COCO model below.
Measured: for each N in --ranks, `mpiexec -n N` ranks with one BLAS thread each (N cores), the same
         global batch split over them; each step is train.py's (forward, global losses, backward,
         the bucketed gradient all-reduce, clipping, SGD). Per step: wall time (the slowest rank: a
         barrier closes each step), the time in `allreduce_gradients` (including waiting for the
         slowest rank) and the bytes it sums. Efficiency = t(1) / (N t(N)): 1.0 is perfect strong scaling.
Model:   `coco-r50-fpn-1x` on 8 GPUs, 2 images each (16 per iteration, 90k iterations). Step time =
         one GPU's compute for 2 images + the gradient all-reduce, not overlapped (minimask sums the
         gradients after the backward; DDP overlaps its buckets with the backward). All-reduce = a
         NCCL ring: each GPU sends and receives 2 (N-1)/N of the gradient bytes (ResNet-50-FPN Mask
         R-CNN's trainable parameters, counted from the model) at the bus bandwidth of the stated
         interconnect, plus a latency per bucket. The one-GPU step time is not measured yet (no GPU
         here): it is assumed as a multiple of Detectron2's (0.261 s/iteration on 8 V100s, ~6.5 h for
         90k iterations: its per-GPU step time), for a range of multiples, or taken from --gpu-step-seconds.
Timings on a shared machine are meaningless: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DETECTRON2 = dict(seconds_per_iteration=0.261, gpus=8, images_per_iteration=16, iterations=90000, hours=6.5)
# NCCL ring all-reduce bus bandwidth (GB/s) assumed per interconnect: ballpark figures of nccl-tests'
# all_reduce_perf "busbw" on such machines; assumptions to vary, not measurements
INTERCONNECTS = {"NVLink (DGX-1, 8 V100)": 130.0, "PCIe 3.0 x16": 10.0}
BUCKET_LATENCY_S = 50e-6          # per NCCL call (a few tens of microseconds on one node)
QUICK = ["--image-size", "64", "--min-size", "64", "--max-size", "64", "--width", "16", "--base-width", "16",
         "--num-train-images", "16"]


def worker(out, steps, warmup, train_flags):
    """One rank: train.py's step, timed. Rank 0 writes {step, allreduce, bytes} per timed step to `out`."""
    from minimask import distributed
    from minimask.backend import device_module, to_device, to_host
    from minimask.builders import build_dataset, build_model, build_optimizer
    from minimask.data import DataLoader
    from minimask.optim import clip_grad_norm_
    from minimask.train import config_from_args

    comm = distributed.world()
    cfg = config_from_args(train_flags)
    xp = device_module(cfg.device)
    distributed.select_device(comm, xp)
    ds = distributed.lead_first(comm, lambda: build_dataset(cfg, cfg.train_split))
    model = build_model(cfg, ds.num_classes, np.random.default_rng([cfg.seed, 1])).train()
    optimizer, scheduler = build_optimizer(cfg, model)
    batches = DataLoader(ds, batch_size=cfg.batch_size, seed=cfg.seed, num_workers=1, rank=comm.rank,
                         world_size=comm.size).batches()
    rows = []
    for it in range(warmup + steps):
        images, targets = to_device(next(batches), xp)
        comm.barrier()
        t0 = time.perf_counter()
        rngs = [np.random.default_rng([cfg.seed, 2, it, int(t["image_id"])]) for t in targets]
        losses = distributed.global_losses(model(images, targets, rng=rngs), model.loss_counts, comm)
        comm.allreduce_sum(to_host(xp.stack([v.data.reshape(()) for v in losses.values()])).astype(np.float64))
        optimizer.zero_grad()
        total = None
        for v in losses.values():
            total = v if total is None else total + v
        total.backward()
        t1 = time.perf_counter()
        nbytes = distributed.allreduce_gradients(model.parameters(), comm)
        t2 = time.perf_counter()
        float(to_host(clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or float("inf"))))
        optimizer.step()
        scheduler.step()
        comm.barrier()
        if it >= warmup:
            rows.append({"step": time.perf_counter() - t0, "allreduce": t2 - t1, "bytes": nbytes})
    if comm.rank == 0:
        Path(out).write_text(json.dumps({"ranks": comm.size, "batch": cfg.batch_size, "rows": rows,
                                         "params": sum(p.data.size for p in model.parameters() if p.requires_grad)}))


def measure(ranks, steps, warmup, train_flags):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    results = {}
    for n in ranks:
        out = Path(tempfile.mkdtemp(prefix="minimask-scaling-")) / "rank0.json"
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(n), sys.executable, __file__, "--worker",
               str(out), "--steps", str(steps), "--warmup", str(warmup), *train_flags]
        print(f"{n} rank(s): {' '.join(cmd[:3])} ...", flush=True)
        subprocess.run(cmd, env=env, check=True)
        results[n] = json.loads(out.read_text())
    return results


def cpu_table(results):
    print("\n== CPU ranks on this machine (one BLAS thread each; the same global batch split over the ranks)")
    print(f"{'ranks':>5} | {'batch':>5} | {'s/step':>7} | {'images/s':>8} | {'all-reduce s/step':>17} | "
          f"{'all-reduce MB/step':>18} | {'efficiency':>10}")
    base = None
    for n, r in sorted(results.items()):
        step = float(np.median([row["step"] for row in r["rows"]]))
        ar = float(np.median([row["allreduce"] for row in r["rows"]]))
        mb = r["rows"][0]["bytes"] / 2**20
        base = base if base is not None else step * n
        print(f"{n:>5} | {r['batch']:>5} | {step:7.3f} | {r['batch'] / step:8.2f} | {ar:17.4f} | {mb:18.1f} | "
              f"{base / (n * step):10.2f}")
    print("(medians over the timed steps; 1 rank all-reduces nothing: 0 MB)")


def coco_model(gpu_step_seconds=None):
    """Hours of `coco-r50-fpn-1x` on 8 GPUs, from the gradient bytes and an assumed/measured one-GPU step."""
    from minimask import distributed
    from minimask.builders import build_model
    from minimask.train import config_from_args

    cfg = config_from_args(["--preset", "coco-r50-fpn-1x"])
    model = build_model(cfg, 81, np.random.default_rng(0))      # COCO's 80 classes + background
    params = [p for p in model.parameters() if p.requires_grad]
    nbytes = sum(p.data.size * p.data.dtype.itemsize for p in params)
    n_buckets = len(distributed.buckets(params))
    g = DETECTRON2["gpus"]
    d2_step = DETECTRON2["seconds_per_iteration"]
    print(f"\n== model: {cfg.preset} on {g} GPUs ({cfg.batch_size} images per iteration, {cfg.iterations} iterations)")
    print(f"gradients per step: {nbytes / 2**20:.0f} MB ({sum(p.data.size for p in params) / 1e6:.1f} M trainable "
          f"float32 parameters) in {n_buckets} buckets of <= {distributed.BUCKET_BYTES / 2**20:.0f} MB")
    print(f"Detectron2 (published, R50-FPN 1x): {d2_step} s/iteration on 8 V100s -> "
          f"{d2_step * DETECTRON2['iterations'] / 3600:.1f} h (it says ~{DETECTRON2['hours']} h)")
    allreduce = {}
    for name, busbw in INTERCONNECTS.items():
        allreduce[name] = 2 * (g - 1) / g * nbytes / (busbw * 1e9) + n_buckets * BUCKET_LATENCY_S
        print(f"NCCL ring all-reduce, {name} at {busbw:.0f} GB/s bus bandwidth: {allreduce[name] * 1e3:.1f} ms/step")
    steps = ([("measured", gpu_step_seconds)] if gpu_step_seconds else []) + \
        [(f"{k}x Detectron2's", k * d2_step) for k in (1.0, 1.5, 2.0, 3.0, 4.0)]
    print(f"\n{'one-GPU step (2 images), assumed':<34} | " + " | ".join(f"{n:>26}" for n in INTERCONNECTS))
    for label, t in steps:
        hours = [(t + allreduce[n]) * cfg.iterations / 3600 for n in INTERCONNECTS]
        print(f"{label + f' = {t:.3f} s':<34} | " + " | ".join(f"{h:24.1f} h" for h in hours))
    print("(minimask's one-GPU step is not measured yet: the rows are assumptions; the issue's GPU target is a "
          "train step <= 3x torchvision's)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", default="1,2", help="comma-separated process counts to measure")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process count")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the conv engines plan)")
    p.add_argument("--quick", action="store_true", help="tiny model and images, 2 steps after 1: a smoke test")
    p.add_argument("--gpu-step-seconds", type=float, default=None, help="a measured one-GPU step (2 images)")
    p.add_argument("--no-model", action="store_true", help="skip the 8-GPU model (it builds ResNet-50-FPN)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args, train_flags = p.parse_known_args(argv)
    sys.path.insert(0, str(ROOT))   # this checkout's minimask, as the ranks get (PYTHONPATH)
    if args.worker:
        return worker(args.worker, args.steps, args.warmup, train_flags)
    if args.quick:
        args.steps, args.warmup, train_flags = 2, 1, QUICK + train_flags
    tmp = tempfile.mkdtemp(prefix="minimask-scaling-data-")
    train_flags = ["--data-dir", tmp, "--output-dir", os.path.join(tmp, "run"), "--num-train-images", "64",
                   *train_flags]
    cpu_table(measure([int(n) for n in args.ranks.split(",")], args.steps, args.warmup, train_flags))
    if not args.no_model:
        coco_model(args.gpu_step_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
