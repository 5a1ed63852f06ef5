"""Benchmark minimask.conv2d / conv_transpose2d on Mask R-CNN's layer shapes.

Two groups of rows: the ResNet-50-FPN layers of one 512x512 image (batch 1, big maps), and the
batched small maps of training: the mask head on R RoIs (R, 256, 14, 14) with its 2x2/2 deconvolution
and 1x1 predictor, and a batch of 8 small (128x128) images giving 32^2, 16^2, 8^2 maps.
For each layer: forward and forward+backward time and GFLOP/s, the float32 matmul GFLOP/s of this
machine measured right before it (a 2048^3 sgemm, best of several), the ratio conv / matmul, and
torch.nn.functional.conv2d / conv_transpose2d on the same shapes when torch is importable.

FLOPs: forward = 2 * N * O * C * kh * kw * Hout * Wout (deconvolution: the same with the roles of
input and output swapped); forward+backward = 3x that (dX and dW each cost one forward's worth).
Times are the best of --repeat rounds; each round runs the matmul and the conv in turn (torch's
rounds come after, on their own).

Reference: "ref fb ms" is forward+backward with the engines off (`minimask.fast.reference()`: the
stage file's im2col + one GEMM, conv.py), best of min(--repeat, 3), so a reader sees what the engine
path buys; ref/fb is that time over the engine's.

Path: the GEMM path conv2d chose for the forward ("winograd", "shifted", "im2col", "1x1"; see
minimask/fast/conv.py); --path forces one where it applies. Winograd rows do 2.25x fewer multiplications
than the FLOPs counted: GFLOP/s is "effective", the direct convolution's FLOPs over the time taken.

    python benchmarks/conv.py [--repeat 7] [--layers stem,3x3-64] [--path shifted] [--no-torch] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from minimask import fast
from minimask.conv import (
    conv2d_backward,
    conv2d_forward,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
)
from minimask.fast import conv as conv_engine
from minimask.fast.host import keep_freed_host_memory

# name, op ("conv" or "deconv"), N, C (input channels), O (output channels), k, stride, padding, H (= W)
LAYERS = [
    ("stem 7x7/2 3->64", "conv", 1, 3, 64, 7, 2, 3, 512),
    ("3x3 64->64 @128", "conv", 1, 64, 64, 3, 1, 1, 128),
    ("1x1 256->64 @128", "conv", 1, 256, 64, 1, 1, 0, 128),
    ("3x3 256->256 @32", "conv", 1, 256, 256, 3, 1, 1, 32),
    ("3x3 512->512 @16", "conv", 1, 512, 512, 3, 1, 1, 16),
    ("FPN 3x3 256->256 @128", "conv", 1, 256, 256, 3, 1, 1, 128),
    # batched small maps, beyond the list: the mask head on R RoIs, a batch of 8 small images
    ("mask 3x3 256 @14 x100", "conv", 100, 256, 256, 3, 1, 1, 14),
    ("mask 3x3 64 @14 x256", "conv", 256, 64, 64, 3, 1, 1, 14),
    ("3x3 64->64 @32 x8", "conv", 8, 64, 64, 3, 1, 1, 32),
    ("3x3 128->128 @16 x8", "conv", 8, 128, 128, 3, 1, 1, 16),
    ("3x3 256->256 @8 x8", "conv", 8, 256, 256, 3, 1, 1, 8),
    ("3x3/2 128->128 @16 x8", "conv", 8, 128, 128, 3, 2, 1, 16),
    ("deconv 2x2/2 256 @14 x100", "deconv", 100, 256, 256, 2, 2, 0, 14),
    ("mask 1x1 256->4 @28 x100", "conv", 100, 256, 4, 1, 1, 0, 28),
]
N_TARGET_LAYERS = 6  # the first six rows are the layer shapes the conv speed target is set on


def interleaved_best(fns, repeat):
    """{name: best time} over `repeat` rounds, each round timing every fn once, in turn.

    The conv and the matmul it is compared with take turns, so a slow spell of this shared machine
    (another VM on the host, a busy neighbour core) hits both alike instead of skewing the ratio.
    """
    for fn in fns.values():
        fn()  # warm-up: allocations, BLAS thread start
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def matmul_fn(n=2048):
    """A 2048^3 float32 GEMM into a preallocated output: the machine's reference GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    return lambda: np.matmul(a, b, out=out), 2 * n**3


def blas_info():
    lines = []
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        lines.append(f"BLAS: {blas.get('name')} {blas.get('version')} ({blas.get('openblas configuration', '')})")
    except Exception as e:  # older numpy: no dict mode
        lines.append(f"BLAS: unknown ({e})")
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    lines.append("threads/env: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "none set")
                 + f"; os.cpu_count()={os.cpu_count()} (OpenBLAS uses all cores unless OPENBLAS_NUM_THREADS)")
    return lines


def torch_or_none():
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        return torch
    except Exception:
        return None


def bench_layer(layer, repeat, torch, reference=True):
    name, op, N, C, O, k, s, p, H = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w_shape = (O, C, k, k) if op == "conv" else (C, O, k, k)
    w = (rng.standard_normal(w_shape, dtype=np.float32) / np.sqrt(C * k * k)).astype(np.float32)
    forward, backward = ((conv2d_forward, conv2d_backward) if op == "conv"
                         else (conv_transpose2d_forward, conv_transpose2d_backward))
    out, cache = forward(x, w, None, stride=s, padding=p)
    g = np.ones_like(out)
    # every (input channel, output channel, tap) pair costs a multiply-add per pixel of the conv2d-side
    # output: conv2d's output, or the deconvolution's input (it is the input-gradient of a conv2d)
    pixels = out.shape[2] * out.shape[3] if op == "conv" else H * H
    flops = 2 * N * O * C * k * k * pixels

    def fwd_bwd():
        _, c = forward(x, w, None, stride=s, padding=p)
        backward(g, c)

    path = (conv_engine.choose_path(x.shape, O, (k, k), (s, s), (p, p), (1, 1)) if op == "conv"
            else "col2im")  # the deconvolution is conv2d's input gradient
    row = {"name": name, "flops": flops, "path": path}
    mm, mm_flops = matmul_fn()
    fns = {"mm": mm, "fwd": lambda: forward(x, w, None, stride=s, padding=p), "fb": fwd_bwd}
    if torch is not None:
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(w, requires_grad=True)
        tg = torch.tensor(g)
        tf = torch.nn.functional.conv2d if op == "conv" else torch.nn.functional.conv_transpose2d

        def t_fwd():
            with torch.no_grad():
                tf(tx, tw, stride=s, padding=p)

        def t_fb():
            tf(tx, tw, stride=s, padding=p).backward(tg)

    row.update(interleaved_best(fns, repeat))
    row["mm"] = mm_flops / row["mm"] / 1e9
    if reference:
        with fast.reference():  # the stage file's im2col + one GEMM, engines off
            row.update(interleaved_best({"ref_fb": fwd_bwd}, min(repeat, 3)))
    if torch is not None:  # afterwards, on its own: its OpenMP threads would perturb the pairs above
        row.update(interleaved_best({"t_fwd": t_fwd, "t_fb": t_fb}, repeat))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--layers", default="", help="comma-separated substrings of layer names (default: all)")
    ap.add_argument("--path", default=None, choices=["winograd", "shifted", "im2col"],
                    help="force this conv path where it applies (default: conv2d's own choice)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the torch columns")
    ap.add_argument("--no-reference", action="store_true", help="leave out the reference (engines off) column")
    ap.add_argument("--quick", action="store_true",
                    help="tiny copies of the first two layers, one round: checks the script runs")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (default: keep freed memory, as minimask.train does)")
    args = ap.parse_args()
    kept = False if args.default_malloc else keep_freed_host_memory()
    conv_engine.FORCE_PATH = args.path
    layers = LAYERS
    if args.quick:  # shapes shrunk to seconds; the figures mean nothing
        layers = [(n, op, N, C, O, k, st, p, min(H, 32)) for n, op, N, C, O, k, st, p, H in LAYERS[:2]]
        args.repeat = 1
    torch = None if args.no_torch else torch_or_none()
    print(f"numpy {np.__version__}, {platform.processor() or platform.machine()}, float32")
    for line in blas_info():
        print(line)
    print("host memory: " + ("freed memory kept for reuse (fast.host.keep_freed_host_memory)" if kept
                             else "glibc malloc defaults (big temporaries page-faulted on every call)"))
    print("FLOPs: fwd = 2*N*O*C*kh*kw*Hout*Wout; fwd+bwd = 3x fwd. Best of", args.repeat, "rounds.")
    print("mm = 2048^3 sgemm GFLOP/s, timed in turn with each layer's runs; ratio = conv GFLOP/s / mm GFLOP/s.")
    if torch is None:
        print("torch not importable: torch columns left out")
    head = f"{'layer':26s} {'fwd ms':>8s} {'GF/s':>6s} {'fwd+bwd ms':>11s} {'GF/s':>6s} {'mm GF/s':>8s} " \
           f"{'fwd/mm':>7s} {'fb/mm':>6s} {'path':>8s} {'ref fb ms':>10s} {'ref/fb':>7s}"
    if torch is not None:
        head += f" {'torch fwd GF/s':>15s} {'torch fb GF/s':>14s}"
    print(head)
    keys = [s.strip() for s in args.layers.split(",") if s.strip()]
    for i, layer in enumerate(layers):
        if keys and not any(k in layer[0] for k in keys):
            continue
        if i == 0 or i == N_TARGET_LAYERS:
            print("-- " + ("ResNet-50-FPN layers of one 512x512 image (target: every 3x3 fb/mm >= 75%)" if i == 0
                           else "batched small maps of training (the mask head, small images; no target)"))
        r = bench_layer(layer, args.repeat, torch, reference=not args.no_reference)
        f_gf, fb_gf = r["flops"] / r["fwd"] / 1e9, 3 * r["flops"] / r["fb"] / 1e9
        line = (f"{r['name']:26s} {r['fwd'] * 1e3:8.2f} {f_gf:6.1f} {r['fb'] * 1e3:11.2f} {fb_gf:6.1f} "
                f"{r['mm']:8.1f} {f_gf / r['mm']:7.0%} {fb_gf / r['mm']:6.0%} {r['path']:>8s}")
        line += (f" {r['ref_fb'] * 1e3:10.2f} {r['ref_fb'] / r['fb']:6.1f}x" if "ref_fb" in r
                 else f" {'-':>10s} {'-':>7s}")
        if torch is not None:
            line += f" {r['flops'] / r['t_fwd'] / 1e9:15.1f} {3 * r['flops'] / r['t_fb'] / 1e9:14.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
