"""Benchmark minimask.nms beside torchvision.ops.nms (CPU) on the same boxes, in the same run.

Boxes: N random centres in an 800x800 image, independent sides uniform in 10..200 px, scores
uniform; N = 1,000, 6,000, 12,000 at IoU 0.7 and 0.5 (the RPN's and the box head's thresholds).
A second table uses clustered boxes (jittered copies of a few objects: what an RPN proposes before
NMS), where the textbook loop's early exits shine. Both implementations must keep the same boxes.

"reference ms" is minimask with its engine off (`minimask.fast.reference()`: nms.py's greedy loop
instead of the sweep in fast/nms.py), best of min(--repeat, 3), so a reader sees what the sweep buys.

Times are the best of --repeat runs, alternating the two (other processes share the CPU);
torch runs single-threaded, as NumPy does. ratio = minimask / torchvision (< 1: minimask faster).

    python benchmarks/nms.py [--repeat 7] [--sizes 1000,6000,12000] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

import numpy as np

from minimask import fast
from minimask.nms import nms


def random_boxes(rng, n, image=800, lo=10, hi=200):
    c = rng.uniform(0, image, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)


def clustered_boxes(rng, n, clusters=20, image=800):
    centres = rng.uniform(100, image - 100, (clusters, 2))
    k = rng.integers(0, clusters, n)
    c = centres[k] + rng.normal(0, 8, (n, 2))
    wh = rng.uniform(40, 160, (clusters, 2))[k] * rng.uniform(0.9, 1.1, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)


def best_pair(fa, fb, repeat):
    """Best-of-repeat seconds of fa and fb, run alternately so both see the same machine load."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--sizes", default="1000,6000,12000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one small size, one round: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeat = "500", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        import torch
        import torchvision

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"
          + (f", torch {torch.__version__}, torchvision {torchvision.__version__}" if torch else ", no torch"))
    rng = np.random.default_rng(args.seed)
    for title, make in (("random boxes", random_boxes), ("clustered boxes", clustered_boxes)):
        print(f"\n{title}")
        print(f"{'N':>6} {'IoU':>4} {'kept':>6} {'minimask ms':>12} {'torchvision ms':>15} {'ratio':>6} "
              f"{'reference ms':>13}")
        for n in sizes:
            b = make(rng, n)
            s = rng.random(n).astype(np.float32)
            for t in (0.7, 0.5):
                keep = nms(b, s, t)
                ours = functools.partial(nms, b, s, t)
                with fast.reference():  # the greedy loop: same boxes kept, more IoUs computed
                    if not np.array_equal(nms(b, s, t), keep):
                        raise SystemExit(f"the sweep and the greedy loop keep different boxes at N={n}, IoU {t}")
                    ref = f"{best_pair(ours, lambda: None, min(args.repeat, 3))[0] * 1e3:>13.1f}"
                if torch is None:
                    ms = best_pair(ours, lambda: None, args.repeat)[0] * 1e3
                    print(f"{n:>6} {t:>4} {len(keep):>6} {ms:>12.1f} {'-':>15} {'-':>6} {ref}")
                    continue
                tb, ts = torch.from_numpy(b), torch.from_numpy(s)
                want = torchvision.ops.nms(tb, ts, t).numpy()
                if not np.array_equal(keep, want):
                    raise SystemExit(f"minimask and torchvision keep different boxes at N={n}, IoU {t}")
                theirs = functools.partial(torchvision.ops.nms, tb, ts, t)
                ta, tt = best_pair(ours, theirs, args.repeat)
                print(f"{n:>6} {t:>4} {len(keep):>6} {ta * 1e3:>12.1f} {tt * 1e3:>15.1f} {ta / tt:>6.2f} {ref}")


if __name__ == "__main__":
    main()
