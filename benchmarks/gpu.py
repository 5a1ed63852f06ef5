"""The one prepared script for a machine with a GPU: correctness, speed and memory, and the main job.

Usage (from the repository root of a checkout, on the GPU machine):
    python3 benchmarks/gpu.py                    # all three parts, under 5 minutes on a bare machine
    python3 benchmarks/gpu.py --wheels DIR       # install what is missing from wheels in DIR (no network)
    MINIMASK_FAKE_CUDA=1 python benchmarks/gpu.py --smoke   # CPU check: stand-in device, small sizes
Needs:  python 3.12 with CuPy (cupy-cuda12x or -13x) and whatever torch/torchvision the machine has
        (any recent version; without them the torchvision column says so). minimask's own dependencies
        (pycocotools, tqdm, matplotlib, pillow) and the test tools (pytest, hypothesis) are installed from
        --wheels (default: benchmarks/wheels when it exists) into a folder beside this script when they
        do not import; nothing is downloaded. Prepare the wheels where there is network:
            pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
                -d benchmarks/wheels pycocotools tqdm matplotlib pillow pytest hypothesis
Prints one table:
  (a) the `gpu`-marked tests (kernels on the device == NumPy, public ops dispatch to the kernels, and
      a whole-model NumPy-vs-CuPy parity test of one training step): passed / failed / skipped;
  (b) ResNet-50-FPN Mask R-CNN (91 classes, random weights, FrozenBN, trunk layers 2-4 trained) at
      2 x 3 x 800 x 1088: one training step (forward, losses, backward, SGD) and one inference, best of
      --repeat after a warm-up (cold NVRTC/cuBLAS caches land in the warm-up), minimask on CuPy against
      torchvision on the same GPU; peak device memory of each (CuPy's pool: peak bytes in use,
      minimask.backend.track_device_memory; torch.cuda.max_memory_allocated). Targets: train step
      <= 3x torchvision's time and <= 1.5x its memory;
  (c) the shapes main job (`python -m minimask.train --device cuda`) for --shapes-minutes minutes:
      iterations, images/s while training, segm AP on the val split;
  (d) the data-parallel gradient all-reduce through NCCL (minimask.distributed), one rank on the one
      GPU: ResNet-50-FPN's gradients bucketed, summed in place, unflattened; time per step (a real
      multi-rank run needs one GPU per rank: `mpiexec -n N`). Skipped on the stand-in device.
--smoke runs the same code on small sizes: for a CPU-only check with MINIMASK_FAKE_CUDA=1 (torch on
the CPU then), so the script is never dead code. Timings of --smoke mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# module to import -> wheel (package) name
NEEDED = {"numpy": "numpy", "PIL": "pillow", "tqdm": "tqdm", "matplotlib": "matplotlib",
          "pycocotools": "pycocotools", "pytest": "pytest", "hypothesis": "hypothesis"}


def ensure_dependencies(wheels):
    """pip-install (from `wheels`, --no-index) every needed module that does not import; returns the
    folder added to sys.path (and to PYTHONPATH for the test subprocess), or None."""
    missing = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return None
    if not wheels or not Path(wheels).is_dir():
        raise SystemExit(f"missing {missing} and no wheel folder (--wheels DIR, see the docstring)")
    target = HERE / "_gpu_site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
           "--target", str(target), *missing]
    print("installing from wheels:", " ".join(missing), flush=True)
    if subprocess.run(cmd).returncode != 0:
        # a dependency the machine already has may lack a wheel there: install exactly what is missing
        print("retrying with --no-deps (the rest must already be installed)", flush=True)
        subprocess.run(cmd[:4] + ["--no-deps"] + cmd[4:], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return target


# ------------------------------------------------------------------------------------------------
# (a) the gpu-marked tests
# ------------------------------------------------------------------------------------------------

def run_gpu_tests(site, timeout):
    env = dict(os.environ)
    paths = (str(ROOT), str(site) if site else "", env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
           "tests/test_kernels.py", "tests/test_gpu_path.py"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n(timed out after {timeout} s)"
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", out)}
    fails = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"counts": counts, "seconds": time.perf_counter() - t0, "failures": fails[:10], "tail": out[-1500:]}


# ------------------------------------------------------------------------------------------------
# (b) ResNet-50-FPN: one training step, one inference
# ------------------------------------------------------------------------------------------------

def make_inputs(size, n=2, objects=3):
    import numpy as np

    H, W = size
    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(n):
        images.append(rng.random((3, H, W), dtype=np.float32))
        xy = rng.uniform(0, 0.6, (objects, 2)) * [W, H]
        wh = rng.uniform(0.1, 0.35, (objects, 2)) * [W, H]
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        masks = np.zeros((objects, H, W), np.uint8)
        for i, b in enumerate(boxes.astype(int)):
            masks[i, b[1]:b[3], b[0]:b[2]] = 1
        targets.append({"boxes": boxes, "labels": rng.integers(1, 91, objects).astype(np.int64), "masks": masks})
    return images, targets


def bench_minimask(size, repeat, xp):
    import numpy as np

    from minimask import backend
    from minimask.model import maskrcnn_resnet50_fpn
    from minimask.optim import SGD
    from minimask.tape import no_grad

    backend.track_device_memory(xp)
    model = maskrcnn_resnet50_fpn(num_classes=91, rng=np.random.default_rng(0), min_size=size[0],
                                  max_size=size[1], trainable_layers=3).to(xp)
    images, targets = backend.to_device(make_inputs(size), xp)
    opt = SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9, momentum=0.9)

    def train_step():
        losses = model(images, targets, rng=np.random.default_rng(0))
        total = None
        for v in losses.values():
            total = v if total is None else total + v
        opt.zero_grad()
        total.backward()
        opt.step()

    def infer():
        with no_grad():
            model(images)

    out = {}
    for name, fn, mode in (("train", train_step, model.train), ("infer", infer, model.eval)):
        mode()
        times = []
        for k in range(repeat + 1):                     # the first one is the warm-up (NVRTC, cuBLAS, pool)
            if k == 1:
                backend.reset_peak_device_memory(xp)
            backend.synchronize(xp)
            t0 = time.perf_counter()
            fn()
            backend.synchronize(xp)
            times.append(time.perf_counter() - t0)
        out[name] = {"s": min(times[1:]), "peak_mb": backend.device_memory(xp)["peak"] / 2**20}
    return out


def bench_torch(size, repeat):
    try:
        import numpy as np
        import torch
        import torchvision
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.ops.misc import FrozenBatchNorm2d
    except Exception as e:  # noqa: BLE001 (any broken install: say so in the table)
        return {"skipped": f"torch/torchvision do not import ({type(e).__name__}: {e})"}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    # as maskrcnn_resnet50_fpn builds it with pretrained weights (FrozenBN, layers 2-4 trained), as minimask
    trunk = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = torchvision.models.detection.MaskRCNN(_resnet_fpn_extractor(trunk, 3), num_classes=91,
                                                  min_size=size[0], max_size=size[1]).to(dev)
    images, targets = make_inputs(size)
    timgs = [torch.from_numpy(im).to(dev) for im in images]
    ttargets = [{k: torch.from_numpy(np.asarray(v)).to(dev) for k, v in t.items()} for t in targets]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9, momentum=0.9)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def train_step():
        losses = model(timgs, ttargets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(timgs)

    out = {"device": str(dev), "version": f"torch {torch.__version__}, torchvision {torchvision.__version__}"}
    for name, fn, mode in (("train", train_step, model.train), ("infer", infer, model.eval)):
        mode()
        times = []
        for k in range(repeat + 1):
            if k == 1 and dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
        out[name] = {"s": min(times[1:]), "peak_mb": peak}
    return out


# ------------------------------------------------------------------------------------------------
# (c) the shapes main job
# ------------------------------------------------------------------------------------------------

def run_shapes(minutes, smoke, workdir):
    from minimask.train import TrainConfig, train

    extra = dict(num_train_images=16, num_val_images=4, image_size=64, min_size=64, max_size=64, width=16,
                 iterations=4, eval_limit=4, log_every=1) if smoke else dict(iterations=100000, eval_limit=100)
    cfg = TrainConfig(device="cuda", time_limit_minutes=minutes, output_dir=str(Path(workdir) / "run"),
                      data_dir=str(Path(workdir) / "data"), checkpoint_every=100000, **extra)
    result = train(cfg, progress=False)
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    seconds = summary["train_minutes"] * 60
    return {"iterations": result["iterations"], "images_per_s": result["iterations"] * cfg.batch_size / seconds,
            "segm_AP": summary["segm_AP"], "bbox_AP": summary["bbox_AP"], "train_s": seconds}


# ------------------------------------------------------------------------------------------------
# (d) the gradient all-reduce through NCCL, one rank
# ------------------------------------------------------------------------------------------------

def run_nccl(xp, repeat):
    """distributed.sum_in_buckets — the path `allreduce_gradients` takes under mpiexec — with NCCL's
    all-reduce on ONE rank (one GPU: a multi-rank NCCL run needs one GPU per rank): ResNet-50-FPN
    Mask R-CNN's gradients, bucketed, summed in place, unflattened; a 1-rank sum leaves them unchanged."""
    import numpy as np

    from minimask import distributed
    from minimask.builders import build_model
    from minimask.train import config_from_args

    if getattr(xp, "__name__", "") != "cupy":
        return {"skipped": "needs CuPy's NCCL on a real GPU (not the stand-in device)"}
    model = build_model(config_from_args(["--preset", "coco-r50-fpn-1x", "--device", "cuda"]), 81,
                        np.random.default_rng(0))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = p.data * 2 + 1
    want = [p.grad.copy() for p in params]
    nccl = distributed.NCCL(0, 1, lambda uid: uid)    # rank 0 of 1: the id needs no broadcast
    times, nbytes = [], 0
    for _ in range(repeat + 1):                        # the first call creates NCCL's channels: not timed
        xp.cuda.get_current_stream().synchronize()
        t0 = time.perf_counter()
        nbytes = distributed.sum_in_buckets(params, nccl.allreduce_sum_)
        xp.cuda.get_current_stream().synchronize()
        times.append(time.perf_counter() - t0)
    same = all(bool((p.grad == w).all()) for p, w in zip(params, want, strict=True))
    return {"mb": nbytes / 2**20, "buckets": len(distributed.buckets(params)), "s": min(times[1:]), "same": same}


# ------------------------------------------------------------------------------------------------

def _fmt(v, unit=""):
    return "-" if v is None or v != v else f"{v:.3g}{unit}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="small sizes: a CPU check with MINIMASK_FAKE_CUDA=1")
    p.add_argument("--wheels", default=str(HERE / "wheels"), help="folder of wheels for missing dependencies")
    p.add_argument("--size", default=None, help="H,W of the two images of (b) (default 800,1088; smoke 96,128)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs after the warm-up (default 2; smoke 1)")
    p.add_argument("--shapes-minutes", type=float, default=None, help="(c) training time (default 2; smoke 0.1)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    site = ensure_dependencies(args.wheels)
    sys.path.insert(0, str(ROOT))
    size = tuple(int(v) for v in (args.size or ("96,128" if args.smoke else "800,1088")).split(","))
    repeat = args.repeat or (1 if args.smoke else 2)
    minutes = args.shapes_minutes if args.shapes_minutes is not None else (0.1 if args.smoke else 2.0)
    skip = set(filter(None, args.skip.split(",")))

    from minimask import backend

    xp = backend.device_module("cuda")
    device = "stand-in device (MINIMASK_FAKE_CUDA=1)" if getattr(xp, "__name__", "").endswith("fake_cuda") else \
        f"CuPy {xp.__version__} on {xp.cuda.runtime.getDeviceProperties(0)['name'].decode()}"
    rows = []
    if "a" not in skip:
        print("(a) gpu-marked tests ...", flush=True)
        a = run_gpu_tests(site, timeout=150)
        c = a["counts"]
        rows.append(("(a) gpu tests", f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, "
                     f"{c.get('skipped', 0)} skipped", f"{a['seconds']:.0f} s"))
        for f in a["failures"]:
            rows.append(("", f, ""))
        if not c:
            print(a["tail"])
    if "b" not in skip:
        print(f"(b) ResNet-50-FPN at 2x3x{size[0]}x{size[1]} ...", flush=True)
        mm = bench_minimask(size, repeat, xp)
        tv = bench_torch(size, repeat)
        for name, label in (("train", "train step"), ("infer", "inference")):
            t = tv.get(name, {})
            ratio_t = mm[name]["s"] / t["s"] if t else None
            ratio_m = mm[name]["peak_mb"] / t["peak_mb"] if t and t["peak_mb"] else None
            theirs = f"torchvision {t['s']:.3f} s, {_fmt(t['peak_mb'], ' MiB')}" if t else tv.get("skipped", "")
            rows.append((f"(b) {label}", f"minimask {mm[name]['s']:.3f} s, {mm[name]['peak_mb']:.0f} MiB | " + theirs,
                         f"time x{_fmt(ratio_t)}, memory x{_fmt(ratio_m)}"
                         + ("  (targets: x3, x1.5)" if name == "train" else "")))
        if "version" in tv:
            rows.append(("", f"{tv['version']} on {tv['device']}", ""))
    if "c" not in skip:
        print(f"(c) shapes main job for {minutes} min ...", flush=True)
        with tempfile.TemporaryDirectory() as work:
            c = run_shapes(minutes, args.smoke, work)
        rows.append(("(c) shapes main job", f"{c['iterations']} iterations in {c['train_s']:.0f} s: "
                     f"{c['images_per_s']:.1f} images/s", f"segm AP {c['segm_AP']:.3f} (bbox {c['bbox_AP']:.3f})"))
    if "d" not in skip:
        print("(d) NCCL gradient all-reduce, 1 rank ...", flush=True)
        d = run_nccl(xp, repeat)
        rows.append(("(d) NCCL all-reduce, 1 rank", d.get("skipped") or
                     f"ResNet-50-FPN gradients {d['mb']:.0f} MB in {d['buckets']} buckets: {d['s'] * 1e3:.1f} ms",
                     "" if "skipped" in d else ("sums unchanged (1 rank)" if d["same"] else "SUMS CHANGED: FAIL")))
    print(f"\nminimask GPU benchmark: {device}{' [--smoke: timings mean nothing]' if args.smoke else ''}")
    w0 = max(len(r[0]) for r in rows) if rows else 0
    w1 = max(len(r[1]) for r in rows) if rows else 0
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
