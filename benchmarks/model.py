"""Benchmark: the whole Mask R-CNN (ResNet-50-FPN), minimask vs torchvision's maskrcnn_resnet50_fpn.

Usage:   python benchmarks/model.py [--repeat 2] [--threads 2] [--no-torch] [--only infer512,infer800,train]
Setup:   both models randomly initialised with 91 classes, FrozenBN, trainable_layers=3; the same inputs.
         infer512 / infer800: eval mode, one 3 x S x S image, min_size = max_size = S (no resize
         beyond the identity), score threshold 0.05, so the full pipeline runs (RPN top-1000,
         RoI heads on 1000 proposals, post-processing, mask head on the detections, pasting).
         train: train mode, 2 images of 3 x 512 x 512 with 3 objects each (boxes, labels, masks);
         one step = forward, the sum of the five losses, backward, SGD (momentum 0.9; lr 1e-9, since random
         weights without normalisation statistics give huge gradients and a real lr would blow up the
         next timed step: the update costs the same whatever the lr).
Time:    best of --repeat runs after one warm-up run, wall clock, per image for inference.
Memory:  every (framework, mode) runs in its own fresh subprocess; peak memory is the rise of the
         process's resident-set high-water mark (getrusage ru_maxrss) over its value after imports,
         model construction and input creation (weights excluded, both frameworks alike). For
         minimask, numpy's own peak allocation (tracemalloc) is printed as well.
Stages:  per-stage forward times from timers around transform / backbone / rpn / roi_heads /
         postprocess (minimask) and forward hooks (torch); backward and the SGD step as a whole.
Threads: torch.set_num_threads(T); OpenBLAS/MKL/OMP thread counts T for numpy.
Engines: a third worker runs minimask with its CPU engines off (MINIMASK_REFERENCE=1: the stage files'
         reference code, one timed run after the warm-up), printed as "reference time (s)" with its
         ratio to the engines' time, so a reader sees what minimask/fast/ buys on the whole model.
         --no-reference skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("infer512", "infer800", "train")


def _rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _inputs(mode):
    import numpy as np

    rng = np.random.default_rng(0)
    if mode.startswith("infer"):
        S = int(mode[5:])
        return [rng.random((3, S, S), dtype=np.float32)], None
    images, targets = [], []
    for _ in range(2):
        images.append(rng.random((3, 512, 512), dtype=np.float32))
        xy = rng.uniform(0, 300, (3, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(40, 200, (3, 2))], 1).astype(np.float32)
        masks = np.zeros((3, 512, 512), np.uint8)
        for i, b in enumerate(boxes.astype(int)):
            masks[i, b[1]:b[3], b[0]:b[2]] = 1
        targets.append({"boxes": boxes, "labels": rng.integers(1, 91, 3).astype(np.int64), "masks": masks})
    return images, targets


class _Timer:
    """Accumulates wall time per stage name."""

    def __init__(self):
        self.t = {}

    def add(self, name, dt):
        self.t[name] = self.t.get(name, 0.0) + dt

    def wrap(self, name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(name, time.perf_counter() - t0)
        return timed


def _minimask_runner(mode, timer):
    import numpy as np

    import minimask.model as M
    from minimask.optim import SGD

    S = 512 if mode == "train" else int(mode[5:])
    model = M.maskrcnn_resnet50_fpn(num_classes=91, rng=np.random.default_rng(0), min_size=S, max_size=S)
    # stage timers around the bound forwards (instance attributes shadow the class methods)
    tr = model.transform          # a plain object: calls go through its class (fresh process, so patch it)
    type(tr).__call__ = timer.wrap("transform", type(tr).__call__)
    tr.postprocess = timer.wrap("postprocess (paste masks)", tr.postprocess)
    for name in ("backbone", "rpn", "roi_heads"):
        mod = getattr(model, name)
        object.__setattr__(mod, "forward", timer.wrap(name, mod.forward))
    images, targets = _inputs(mode)
    if mode == "train":
        model.train()
        opt = SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9, momentum=0.9)

        def run():
            losses = model(images, targets, rng=np.random.default_rng(0))
            total = sum(losses.values(), start=losses["loss_mask"] * 0.0)
            opt.zero_grad()
            t0 = time.perf_counter()
            total.backward()
            t1 = time.perf_counter()
            opt.step()
            timer.add("backward", t1 - t0)
            timer.add("sgd step", time.perf_counter() - t1)
    else:
        model.eval()

        def run():
            model(images)
    return run


def _torch_runner(mode, timer):
    import numpy as np
    import torch
    import torchvision

    torch.set_num_threads(int(os.environ["MINIMASK_BENCH_THREADS"]))
    torch.manual_seed(0)
    S = 512 if mode == "train" else int(mode[5:])
    # as maskrcnn_resnet50_fpn builds it *with* pretrained weights (FrozenBN, layers 2-4 trained), which
    # is minimask's default too; without weights torchvision would switch to BatchNorm and train all 5
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    trunk = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(trunk, 3)
    model = torchvision.models.detection.MaskRCNN(backbone, num_classes=91, min_size=S, max_size=S)
    starts = {}
    for name in ("transform", "backbone", "rpn", "roi_heads"):
        mod = getattr(model, name)
        mod.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o, n=name: timer.add(n, time.perf_counter() - starts[n]))
    orig_post = model.transform.postprocess
    model.transform.postprocess = timer.wrap("postprocess (paste masks)", orig_post)
    images, targets = _inputs(mode)
    timgs = [torch.from_numpy(im) for im in images]
    if mode == "train":
        model.train()
        ttargets = [{k: torch.from_numpy(np.asarray(v)) for k, v in t.items()} for t in targets]
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9, momentum=0.9)

        def run():
            losses = model(timgs, ttargets)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            total.backward()
            t1 = time.perf_counter()
            opt.step()
            timer.add("backward", t1 - t0)
            timer.add("sgd step", time.perf_counter() - t1)
    else:
        model.eval()

        def run():
            with torch.no_grad():
                model(timgs)
    return run


def _worker(framework, mode, repeat):
    timer = _Timer()
    run = (_torch_runner if framework == "torch" else _minimask_runner)(mode, timer)
    base = _rss_mb()
    times, stages = [], []
    for _ in range(repeat + 1):  # the first run is a warm-up
        timer.t = {}
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        stages.append(dict(timer.t))
    best = 1 + min(range(repeat), key=lambda i: times[1 + i])
    result = {"framework": framework, "mode": mode, "time_s": times[best], "times": times, "stages": stages[best],
              "peak_mb": _rss_mb() - base}
    if framework == "minimask":  # (not for "minimask-ref": the engines' run is the one measured)
        import tracemalloc

        tracemalloc.start()
        run()
        result["numpy_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print("RESULT " + json.dumps(result))


def _spawn(framework, mode, args):
    env = dict(os.environ)
    t = str(args.threads)
    env.update(OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t, MINIMASK_BENCH_THREADS=t)
    env.pop("MINIMASK_REFERENCE", None)
    repeat = args.repeat
    if framework == "minimask-ref":  # the same runner with every CPU engine off (minimask/fast/)
        env["MINIMASK_REFERENCE"] = "1"
        repeat = 1
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, mode, "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{framework} {mode} worker failed:\n{proc.stderr[-3000:]}")


def _torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def main(argv=None):
    p = argparse.ArgumentParser(description="Mask R-CNN ResNet-50-FPN benchmark, minimask vs torchvision")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-reference", action="store_true", help="skip the engines-off (reference) run")
    p.add_argument("--only", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], args.repeat)
        return
    modes = [m for m in args.only.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown modes {bad}; choose from {MODES}")
    frameworks = ["minimask"] + (["torch"] if not args.no_torch and _torch_available() else [])
    res = {}
    for mode in modes:  # interleave the frameworks so both see similar machine load
        for fw in frameworks + ([] if args.no_reference else ["minimask-ref"]):
            res[fw, mode] = _spawn(fw, mode, args)

    print(f"Mask R-CNN ResNet-50-FPN, 91 classes, random weights, {args.threads} threads, best of {args.repeat} "
          "(after 1 warm-up)")
    print("infer S: eval, 1 image S x S; train: 2 images 512 x 512, forward + loss + backward + SGD step")
    print("peak memory = rise of ru_maxrss over the value after imports + model build + inputs, fresh process each")
    header = f"{'':32s}{'minimask':>12s}" + (f"{'torch':>12s}{'ratio':>10s}" if "torch" in frameworks else "")
    print(header)
    for mode in modes:
        for key, label in (("time_s", "time (s)"), ("peak_mb", "peak memory (MB)")):
            m = res["minimask", mode][key]
            line = f"{mode + ' ' + label:32s}{m:12.3f}"
            if "torch" in frameworks:
                t = res["torch", mode][key]
                line += f"{t:12.3f}{m / t:9.2f}x" if t > 0 else f"{t:12.3f}{'n/a':>10s}"
            print(line)
        if not args.no_reference:
            r, m = res["minimask-ref", mode]["time_s"], res["minimask", mode]["time_s"]
            print(f"{mode + ' reference time (s)':32s}{r:12.3f}   engines off; {r / m:.2f}x the engines' time")
    for mode in modes:
        print(f"\n{mode}: per-stage time (s)" + ("   minimask | torch" if "torch" in frameworks else ""))
        names = list(res["minimask", mode]["stages"])
        if "torch" in frameworks:
            names += [n for n in res["torch", mode]["stages"] if n not in names]
        for n in names:
            m = res["minimask", mode]["stages"].get(n, float("nan"))
            line = f"  {n:30s}{m:10.3f}"
            if "torch" in frameworks:
                line += f"{res['torch', mode]['stages'].get(n, float('nan')):10.3f}"
            print(line)
        print(f"  minimask numpy peak allocation (tracemalloc) {res['minimask', mode]['numpy_peak_mb']:.1f} MB; "
              "runs (s): " + ", ".join(f"{t:.2f}" for t in res["minimask", mode]["times"]))
        if "torch" in frameworks:
            print("  torch runs (s): " + ", ".join(f"{t:.2f}" for t in res["torch", mode]["times"]))


if __name__ == "__main__":
    main()
