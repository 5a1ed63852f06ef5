"""Benchmark: where the default training step's time goes — per stage, and GEMM vs other NumPy vs Python.

Usage:   python benchmarks/profile_step.py [--steps 20] [--warmup 3] [--data DIR] [--no-native] [TRAIN FLAGS...]
         (TRAIN FLAGS as `python -m minimask.train`'s, e.g. --num-train-images 32; --quick: 4 steps after 1)
Build:   the default run's configuration, dataset, model (builders.build_model), DataLoader, SGD and
         scheduler exactly as train.py builds them; each step runs train.train's statements (forward, the
         losses to the host, backward, gradient clipping, SGD step, scheduler step). --warmup steps first
         (the conv engines choose their plans then), then --steps timed steps.
Stages:  the package is not edited: inside this process the benchmark wraps the `forward` of the model's
         modules (transform, ResNet body, FPN, RPN head, box/mask pooling, heads) and the module-level functions
         they call by name (anchors, filter_proposals, assign_targets_to_anchors, rpn_losses,
         select_training_samples, fastrcnn_loss, project_masks_on_boxes, maskrcnn_loss) with wall-clock
         timers kept on a stack, so each stage's time is exclusive (a stage's own time, not its sub-stages').
         Backward: tape.Node is patched so every recorded op's backward is timed and charged to the stage that
         recorded the op in the forward. Data = the wait for the next prefetched batch.
GEMM:    numpy.matmul / dot / tensordot / einsum are replaced, in this process, by timing wrappers (minimask's
         conv engines and RoIAlign call `xp.matmul` through the module, so they pass through them); the one
         `@` of the default path (layers.linear forward/backward) is counted as GEMM with its bias add.
         Only the main thread is counted.
Ops:     every tape op (tape.op's forward and backward, patched through its closure) is counted and timed:
         "inside ops" is the time in ops' own bodies (array work plus the Python of the bodies), the rest
         of the step is glue (target building, sampling, NMS, Python).
Native:  timers cannot split C from Python, so (unless --no-native, or py-spy is missing) the same steps run
         once more under `py-spy record --native` (200 samples/s, main thread only, samples outside the timed
         steps and while waiting for data dropped) and each sample is classified by its innermost frame:
         OpenBLAS / a matmul loop -> GEMM; NumPy's C code (ufunc loops, copies, reductions, indexing,
         allocation, dispatch) or libc/libm under a NumPy frame -> other NumPy C; the interpreter
         (a Python frame or libpython innermost) -> Python overhead; anything else (pycocotools, ...) -> other.
         That is the honest split: a sample is Python overhead exactly when the CPU was running the
         interpreter rather than array code. py-spy pauses the process to sample, so its run is not timed.
Arrays:  not counted (NumPy has no cheap allocation counter; tracemalloc would distort the timings).
Timings on a shared machine are meaningless: run it alone.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from minimask import box_head, fast, layers, mask_head, roi_heads, rpn, tape  # noqa: F401
from minimask.anchors import AnchorGenerator
from minimask.backend import device_module, to_device, to_host
from minimask.builders import build_dataset, build_model, build_optimizer
from minimask.data import DataLoader
from minimask.fast.host import keep_freed_host_memory
from minimask.optim import clip_grad_norm_
from minimask.train import config_from_args

MAIN = threading.main_thread().ident
GROUP = {  # stage -> the line of the table it is added to
    "transform": "forward: transform", "resnet": "forward: backbone (ResNet body)", "fpn": "forward: backbone (FPN)",
    "rpn.head": "forward: RPN head", "rpn.anchors": "forward: RPN anchors", "rpn.proposals": "forward: RPN proposals",
    "rpn.targets": "forward: RPN targets", "rpn": "forward: RPN other",
    "roi.sampling": "forward: RoI sampling + box targets", "roi.box_pool": "forward: RoI box pooling",
    "roi.box_head": "forward: RoI box head + predictor", "roi.mask_targets": "forward: RoI mask targets",
    "roi.mask_pool": "forward: RoI mask pooling", "roi.mask_head": "forward: RoI mask head + predictor",
    "roi": "forward: RoI heads other", "loss.rpn": "forward: losses (RPN)", "loss.box": "forward: losses (box)",
    "loss.mask": "forward: losses (mask)", "model": "forward: model other",
}


class Profiler:
    """Exclusive wall time per stage (a stack of timers), backward time per recording stage, GEMM, ops."""

    def __init__(self):
        self.stack = []                  # [stage name, start of its current exclusive slice]
        self.t = collections.Counter()   # stage -> seconds (exclusive)
        self.n = collections.Counter()   # counters
        self.active = False

    def enter(self, name):
        now = time.perf_counter()
        if self.stack:
            self.t[self.stack[-1][0]] += now - self.stack[-1][1]
        self.stack.append([name, now])

    def exit(self):
        now = time.perf_counter()
        name, t0 = self.stack.pop()
        self.t[name] += now - t0
        if self.stack:
            self.stack[-1][1] = now

    def wrap(self, name, fn):
        def timed(*a, **k):
            if not self.active or threading.get_ident() != MAIN:
                return fn(*a, **k)
            self.enter(name)
            try:
                return fn(*a, **k)
            finally:
                self.exit()
        return timed

    def current(self):
        return self.stack[-1][0] if self.stack else "model"

    def add(self, key, dt, count=1):
        self.t[key] += dt
        self.n[key] += count


def instrument(model, prof: Profiler):
    """Wrap the model's stages, numpy's GEMM entry points and the tape's ops (this process only)."""
    def wrap_forward(mod, name):
        mod.__dict__["forward"] = prof.wrap(name, mod.forward)   # Module.__call__ -> self.forward

    wrap_forward(model, "model")
    object.__setattr__(model, "transform", _Callable(model.transform, prof.wrap("transform", model.transform)))
    wrap_forward(model.backbone.body, "resnet")
    wrap_forward(model.backbone.fpn, "fpn")
    wrap_forward(model.rpn, "rpn")
    wrap_forward(model.rpn.head, "rpn.head")
    rh = model.roi_heads
    wrap_forward(rh, "roi")
    wrap_forward(rh.box_roi_pool, "roi.box_pool")
    wrap_forward(rh.box_head, "roi.box_head")
    wrap_forward(rh.box_predictor, "roi.box_head")
    wrap_forward(rh.mask_roi_pool, "roi.mask_pool")
    wrap_forward(rh.mask_head, "roi.mask_head")
    wrap_forward(rh.mask_predictor, "roi.mask_head")
    AnchorGenerator.__call__ = prof.wrap("rpn.anchors", AnchorGenerator.__call__)
    rpn.filter_proposals = prof.wrap("rpn.proposals", rpn.filter_proposals)
    rpn.rpn_losses = prof.wrap("loss.rpn", rpn.rpn_losses)
    m = model.rpn
    m.__dict__["compute_loss"] = prof.wrap("rpn.targets", m.compute_loss)   # minus rpn_losses, nested inside
    roi_heads.select_training_samples = prof.wrap("roi.sampling", roi_heads.select_training_samples)
    roi_heads.fastrcnn_loss = prof.wrap("loss.box", roi_heads.fastrcnn_loss)
    roi_heads.project_masks_on_boxes = prof.wrap("roi.mask_targets", roi_heads.project_masks_on_boxes)
    roi_heads.maskrcnn_loss = prof.wrap("loss.mask", roi_heads.maskrcnn_loss)

    # GEMM: numpy's entry points, looked up through the module at each call (xp.matmul); re-entry not counted
    depth = [0]

    def gemm(fn):
        def timed(*a, **k):
            if depth[0] or not prof.active or threading.get_ident() != MAIN:
                return fn(*a, **k)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                prof.add("gemm", time.perf_counter() - t0)
                depth[0] -= 1
        return timed
    for name in ("matmul", "dot", "tensordot", "einsum"):
        setattr(np, name, gemm(getattr(np, name)))

    # tape ops: patch forward/backward in each op's closure (tape.op's `apply`), found in the package's modules
    seen = set()
    for mod in [v for k, v in sys.modules.items() if k.startswith("minimask")]:
        for fn in list(vars(mod).values()):
            code = getattr(fn, "__code__", None)
            if code is None or not hasattr(fn, "forward") or id(fn) in seen or "forward" not in code.co_freevars:
                continue
            seen.add(id(fn))
            cells = dict(zip(code.co_freevars, fn.__closure__, strict=True))
            op_name = fn.__name__
            cells["forward"].cell_contents = _timed_op(prof, op_name, cells["forward"].cell_contents, "fwd", depth)
    prof.n["op kinds"] = len(seen)
    original_node_init = tape.Node.__init__

    def node_init(self, name, backward_fn, cache, inputs, wants_mask=False):
        stage = prof.current()
        bw = _timed_op(prof, name, backward_fn, "bwd", depth, stage=stage)
        original_node_init(self, name, bw, cache, inputs, wants_mask)
    tape.Node.__init__ = node_init


class _Callable:
    """A stand-in for an object whose __call__ is timed (the transform is a plain class, not a Module)."""

    def __init__(self, obj, call):
        self._obj, self._call = obj, call

    def __call__(self, *a, **k):
        return self._call(*a, **k)

    def __getattr__(self, name):
        return getattr(self._obj, name)


def _timed_op(prof, op_name, fn, kind, depth, stage=None):
    is_gemm = op_name == "linear"   # x @ W^T (+ b): the `@` the numpy wrappers cannot see

    def timed(*a, **k):
        if not prof.active or threading.get_ident() != MAIN:
            return fn(*a, **k)
        if is_gemm:
            depth[0] += 1
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            dt = time.perf_counter() - t0
            if is_gemm:
                depth[0] -= 1
                prof.add("gemm", dt, 0)
            prof.add(f"ops {kind}", dt)
            if kind == "bwd":
                prof.add(f"bwd:{stage}", dt)
    return timed


def setup(flags):
    """The default run's objects, built as train.train builds them."""
    cfg = config_from_args(flags)
    train_set = build_dataset(cfg, cfg.train_split)
    rng = np.random.default_rng([cfg.seed, 1])
    xp = device_module(cfg.device)
    model = build_model(cfg, train_set.num_classes, rng)
    model.train()
    optimizer, scheduler = build_optimizer(cfg, model)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, flip_prob=cfg.flip_prob, seed=cfg.seed,
                        num_workers=cfg.num_workers)
    return cfg, model, optimizer, scheduler, loader.batches(), rng, xp


def step(cfg, model, optimizer, scheduler, batches, rng, xp, prof):
    """train.train's loop body, with the non-model parts timed (counted only while prof.active: not in warm-up)."""
    t = time.perf_counter()
    images, targets = to_device(next(batches), xp)
    t1 = time.perf_counter()
    losses = model(images, targets, rng=rng)
    t2 = time.perf_counter()
    host = to_host(xp.stack([v.data.reshape(()) for v in losses.values()]))
    total = float(sum(host))
    if not math.isfinite(total):
        raise FloatingPointError(f"non-finite loss {total}")
    loss = None
    for v in losses.values():
        loss = v if loss is None else loss + v
    optimizer.zero_grad()
    t3 = time.perf_counter()
    loss.backward()
    t4 = time.perf_counter()
    float(to_host(clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)))
    optimizer.step()
    scheduler.step()
    t5 = time.perf_counter()
    if prof.active:
        for key, dt in (("data (wait for the next batch)", t1 - t), ("forward", t2 - t1),
                        ("losses: sum, to host, zero_grad", t3 - t2), ("backward", t4 - t3),
                        ("optimizer (clip, SGD step, scheduler)", t5 - t4), ("step", t5 - t)):
            prof.t[key] += dt


def warm_steps(n, *objs):
    for _ in range(n):
        step(*objs)


def timed_steps(n, *objs):
    prof = objs[-1]
    prof.active = True
    for _ in range(n):
        step(*objs)
    prof.active = False


def report(prof: Profiler, steps: int):
    ms = lambda s: 1000 * s / steps  # noqa: E731
    total = prof.t["step"]
    pct = lambda s: 100 * s / total  # noqa: E731
    print(f"\n{'stage':<46} {'ms/step':>9} {'% step':>7}")
    line = lambda name, s: print(f"{name:<46} {ms(s):9.1f} {pct(s):6.1f}%")  # noqa: E731
    line("data (wait for the next batch)", prof.t["data (wait for the next batch)"])
    fwd = collections.Counter()
    for stage, g in GROUP.items():
        fwd[g] += prof.t[stage]
    for g in dict.fromkeys(GROUP.values()):
        line("  " + g, fwd[g])
    line("forward (sum of the above)", prof.t["forward"])
    line("losses: sum, to host, zero_grad", prof.t["losses: sum, to host, zero_grad"])
    bwd_ops = sum(v for k, v in prof.t.items() if k.startswith("bwd:"))
    line("backward", prof.t["backward"])
    by = collections.Counter()
    for k, v in prof.t.items():
        if k.startswith("bwd:"):
            by[GROUP.get(k[4:], k[4:]).replace("forward: ", "")] += v
    for g, v in by.most_common():
        line(f"  backward of {g}", v)
    line("  backward: the tape's own work (order, sums)", prof.t["backward"] - bwd_ops)
    line("optimizer (clip, SGD step, scheduler)", prof.t["optimizer (clip, SGD step, scheduler)"])
    line("step", total)
    print(f"\nacross the step ({steps} steps; {1000 * total / steps:.0f} ms/step, "
          f"{4 * steps / total:.2f} images/s at batch 4):")
    ops = prof.t["ops fwd"] + prof.t["ops bwd"]
    line("GEMM (numpy matmul/dot/tensordot/einsum, linear)", prof.t["gemm"])
    line("inside tape ops, not GEMM", ops - prof.t["gemm"])
    line("outside tape ops (glue: targets, NMS, Python)", total - ops - prof.t["data (wait for the next batch)"])
    print(f"tape ops per step: {prof.n['ops fwd'] / steps:.0f} forward + {prof.n['ops bwd'] / steps:.0f} backward "
          f"calls ({prof.n['op kinds']} op kinds); GEMM calls per step: {prof.n['gemm'] / steps:.0f}")


def classify(frames):
    """The category of one native py-spy sample, by its innermost frame (see the module docstring)."""
    leaf = frames[-1]
    numpy_in_stack = any("numpy/_core/" in f and ".so)" in f for f in frames)
    if any("openblas" in f or "gemm" in f.lower() or "_matmul" in f for f in frames[-3:]):
        return "GEMM (OpenBLAS)"
    if "numpy/" in leaf and ".so)" in leaf:
        return "other NumPy C (elementwise, copies, reductions, indexing)"
    if ("libc.so" in leaf or "libm.so" in leaf) and numpy_in_stack:
        return "other NumPy C (elementwise, copies, reductions, indexing)"
    if ".py:" in leaf or "libpython" in leaf or "(python" in leaf or "<frozen" in leaf:
        return "Python interpreter (overhead)"
    if "libc.so" in leaf:
        return "Python interpreter (overhead)"   # malloc etc. for Python objects (no NumPy frame above)
    return "other native code"


def native_split(argv, steps, warmup):
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        print("\n(py-spy not installed: `pip install py-spy` for the sampled GEMM / NumPy / Python split)")
        return
    out = Path(tempfile.mkdtemp(prefix="minimask-spy-")) / "raw.txt"
    cmd = [spy, "record", "--native", "--format", "raw", "-r", "200", "-o", str(out), "--", sys.executable,
           __file__, *argv, "--steps", str(steps), "--warmup", str(warmup), "--no-native", "--quiet"]
    print(f"\nsampling the same steps natively: {' '.join(cmd)}", flush=True)
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0 or not out.exists():
        print(f"py-spy failed (exit {rc}); no native split")
        return
    counts = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "timed_steps (" not in stack or "profile_step.py" not in stack:
            continue
        counts[classify(stack.split(";"))] += int(n)
    shutil.rmtree(out.parent)
    total = sum(counts.values())
    if not total:
        print("py-spy gave no samples inside the timed steps")
        return
    print(f"\nnative samples of the main thread inside the timed steps ({total} samples, 200/s, py-spy --native):")
    for k, v in counts.most_common():
        print(f"  {k:<60} {100 * v / total:5.1f}%")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data", default=None, help="shapes folder (default runs/shapes-data, as train.py)")
    p.add_argument("--quick", action="store_true", help="4 steps after 1 warm-up (a smoke test)")
    p.add_argument("--no-native", action="store_true", help="skip the py-spy run")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args, train_flags = p.parse_known_args(argv)
    if args.quick:
        args.steps, args.warmup = 4, 1
    if args.data:
        train_flags += ["--data-dir", args.data]
    keep_freed_host_memory()   # as train.main
    objs = setup(train_flags)
    cfg, model = objs[0], objs[1]
    prof = Profiler()
    instrument(model, prof)
    warm_steps(args.warmup, *objs, prof)
    timed_steps(args.steps, *objs, prof)
    if args.quiet:
        return 0
    print(f"== profile of the default training step: model {cfg.model} {cfg.backbone} width {cfg.width}, "
          f"{cfg.image_size}px, batch {cfg.batch_size}, {model.num_parameters() / 1e6:.2f} M parameters, "
          f"engines {'off' if not fast.enabled() else 'on'}, {os.cpu_count()} CPU cores; "
          f"{args.steps} steps after {args.warmup} warm-up")
    report(prof, args.steps)
    if not args.no_native:
        passthrough = train_flags if not args.data else train_flags[:-2] + ["--data", args.data]
        native_split(passthrough, args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
