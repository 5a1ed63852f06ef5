"""Benchmark minimask's RoIAlign and RoIPool (NumPy path) beside torchvision's CPU kernels.

Setting: one 256 x 128 x 128 float32 feature map (a P2 level of a 512 x 512 image, spatial scale
1/4); 512 and 1,000 boxes shaped like proposals (sides log-uniform in 16..256 image pixels, inside
the image); 7x7 (box head) and 14x14 (mask head); sampling ratio 2 and adaptive (0). RoIPool at
7x7 and 14x14. Forward, and backward with a gradient of ones. torchvision runs with
torch.set_num_threads(--threads) (default 2); NumPy uses whatever BLAS threads it has.

"ref fwd" / "ref bwd" are minimask with its engines off (`minimask.fast.reference()`: the stage
files' per-RoI bilinear sampling and scatter, per-bin max), one run each, so a reader sees what the
tap engine (fast/roi_align.py) and the chunked gather (fast/roi_pool.py) buy.

Times are the best of --repeat runs (other processes share the CPU); ratio = minimask / torchvision
(below 1: minimask is faster). Without torch the torchvision columns are left empty.

    python benchmarks/roi_ops.py [--repeat 3] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from minimask import fast
from minimask.roi_align import roi_align_backward, roi_align_forward
from minimask.roi_pool import roi_pool_backward, roi_pool_forward

IMAGE = 512
SCALE = 1 / 4


def proposals(rng, K, image=IMAGE):
    """(K, 5) rois (batch 0, x1, y1, x2, y2): sides log-uniform in [16, 256], inside the image."""
    side = np.exp(rng.uniform(np.log(16), np.log(256), (K, 2)))
    corner = rng.uniform(0, 1, (K, 2)) * (image - side)
    return np.concatenate([np.zeros((K, 1)), corner, corner + side], axis=1).astype(np.float32)


def best_of(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_case(x, rois, op, size, sr, repeat, torch):
    """(ours fwd, ours bwd, torchvision fwd, torchvision bwd, (reference fwd, bwd)) seconds for one setting."""
    if op == "roi_align":
        settings = dict(output_size=size, spatial_scale=SCALE, sampling_ratio=sr, aligned=False)
        fwd, bwd = roi_align_forward, roi_align_backward
    else:
        settings = dict(output_size=size, spatial_scale=SCALE)
        fwd, bwd = roi_pool_forward, roi_pool_backward
    out, cache = fwd(x, rois, **settings)
    g = np.ones_like(out)
    t_fwd = best_of(lambda: fwd(x, rois, **settings), repeat)
    t_bwd = best_of(lambda: bwd(g, cache), repeat)
    with fast.reference():
        ref_cache = fwd(x, rois, **settings)[1]
        ref = (best_of(lambda: fwd(x, rois, **settings), 1), best_of(lambda: bwd(g, ref_cache), 1))
    if torch is None:
        return t_fwd, t_bwd, None, None, ref
    import torchvision

    xt = torch.from_numpy(x).requires_grad_(True)
    bt = torch.from_numpy(rois)
    if op == "roi_align":
        run = lambda: torchvision.ops.roi_align(xt, bt, size, SCALE, sr, False)   # noqa: E731
    else:
        run = lambda: torchvision.ops.roi_pool(xt, bt, size, SCALE)              # noqa: E731
    y = run()
    gt = torch.ones_like(y)
    with torch.no_grad():
        tv_fwd = best_of(run, repeat)
    tv_bwd = best_of(lambda: torch.autograd.grad(y, xt, gt, retain_graph=True), repeat)
    return t_fwd, t_bwd, tv_fwd, tv_bwd, ref


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="only 64 boxes, 7x7, one round: checks the script runs")
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, IMAGE // 4, IMAGE // 4)).astype(np.float32)
    cases = [("roi_align", K, s, sr) for K in (512, 1000) for s in (7, 14) for sr in (2, 0)]
    cases += [("roi_pool", K, s, None) for K in (512, 1000) for s in (7, 14)]
    if args.quick:
        cases = [(op, 64, s, sr) for op, K, s, sr in cases if K == 512 and s == 7]
        args.repeat = 1
    head = f"{'op':<10}{'boxes':>6}{'size':>6}{'sr':>4} | {'fwd ms':>8}{'tv fwd':>8}{'ratio':>7} | " \
           f"{'bwd ms':>8}{'tv bwd':>8}{'ratio':>7} | {'ref fwd':>8}{'ref bwd':>8}"
    print(f"feature map (1, 256, {IMAGE // 4}, {IMAGE // 4}) float32, scale 1/4; torch threads {args.threads}")
    print(head)
    print("-" * len(head))
    for op, K, size, sr in cases:
        rois = proposals(rng, K)
        f, b, tf, tb, (rf, rb) = bench_case(x, rois, op, size, sr, args.repeat, torch)
        ms = lambda t: f"{t * 1e3:8.0f}" if t is not None else f"{'-':>8}"             # noqa: E731
        ratio = lambda a, t: f"{a / t:7.2f}" if t else f"{'-':>7}"                     # noqa: E731
        print(f"{op:<10}{K:>6}{size:>6}{sr if sr is not None else '-':>4} | {ms(f)}{ms(tf)}{ratio(f, tf)} | "
              f"{ms(b)}{ms(tb)}{ratio(b, tb)} | {ms(rf)}{ms(rb)}", flush=True)


if __name__ == "__main__":
    main()
