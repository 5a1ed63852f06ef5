"""Benchmark: ResNet-50-FPN forward and forward+backward, minimask vs torch/torchvision (if installed).

Usage:   python benchmarks/backbone.py [--size 512] [--repeat 5] [--threads 2] [--no-torch] [--profile]
Setup:   batch 1, 3 x size x size float32, resnet_fpn_backbone('resnet50'), FrozenBN, trainable_layers=3
         (Mask R-CNN's default: stem and layer1 frozen). Forward runs without a tape (no_grad);
         forward+backward uses loss = sum of all P2..P6 elements.
Time:    best of --repeat runs after one warm-up run, wall clock; also the best CPU time (user + system, all
         threads) of a run, which other processes on the machine disturb less. The two frameworks' workers
         run side by side (both alive, taking turns run by run), so they see the same machine load over time.
Memory:  every (framework, mode) pair runs in its own fresh subprocess; peak memory is the rise of
         the process's resident-set high-water mark (getrusage ru_maxrss) over its value after
         imports, model construction and input creation, so weights are excluded and both frameworks
         are measured the same way (it includes BLAS/oneDNN scratch and allocator slack).
         For minimask, numpy's own peak allocation (tracemalloc) is printed as well.
Threads: torch.set_num_threads(T); OpenBLAS/MKL/OMP thread counts set to T for numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _rss_mb():
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024.0


def _cpu_s():
    """User + system CPU seconds of this process, all threads (less sensitive to other load than wall time)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker(framework, mode, size, profile):
    """Run in a fresh process: build, then one timed run per "run" line on stdin; print one JSON line."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    if framework == "minimask":
        from minimask.fpn import resnet_fpn_backbone
        from minimask.tape import no_grad

        model = resnet_fpn_backbone("resnet50", trainable_layers=3, rng=np.random.default_rng(0))

        def run():
            if mode == "forward":
                with no_grad():
                    model(x)
                return
            model.zero_grad()
            out = model(x)
            loss = None
            for v in out.values():
                loss = v.sum() if loss is None else loss + v.sum()
            loss.backward()
    else:
        import torch
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_backbone

        torch.set_num_threads(int(os.environ["MINIMASK_BENCH_THREADS"]))
        model = tv_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
        tx = torch.from_numpy(x)

        def run():
            if mode == "forward":
                with torch.no_grad():
                    model(tx)
                return
            model.zero_grad(set_to_none=True)
            out = model(tx)
            sum(v.sum() for v in out.values()).backward()

    base = _rss_mb()
    times, cpu = [], []
    print("READY", flush=True)
    for line in sys.stdin:  # the driver says "run" once per timed iteration, alternating frameworks
        if line.strip() != "run":
            break
        t0, c0 = time.perf_counter(), _cpu_s()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
        print(f"TIME {times[-1]}", flush=True)
    result = {"framework": framework, "mode": mode, "time_s": min(times[1:]), "times": times,
              "cpu_s": min(cpu[1:]), "peak_mb": _rss_mb() - base}
    if framework == "minimask":
        import tracemalloc

        tracemalloc.start()
        run()
        result["numpy_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        if profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            run()
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
            result["profile"] = s.getvalue()
    print("RESULT " + json.dumps(result))


def _run_mode(frameworks, mode, args):
    """Start one fresh worker per framework, then time them in alternation (back to back)."""
    env = dict(os.environ)
    t = str(args.threads)
    env.update(OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t, MINIMASK_BENCH_THREADS=t)
    procs = {}
    for fw in frameworks:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, mode, "--size", str(args.size)]
        cmd += ["--profile"] if args.profile else []
        procs[fw] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        _expect(procs[fw], "READY")
    for _ in range(args.repeat + 1):  # the first round is a warm-up
        for fw in frameworks:
            procs[fw].stdin.write("run\n")
            procs[fw].stdin.flush()
            _expect(procs[fw], "TIME")
    results = {}
    for fw in frameworks:
        out, _ = procs[fw].communicate("done\n")
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if procs[fw].returncode or not lines:
            raise RuntimeError(f"{fw} {mode} worker failed (exit {procs[fw].returncode})")
        results[fw, mode] = json.loads(lines[0][len("RESULT "):])
    return results


def _expect(proc, word):
    line = proc.stdout.readline()
    if not line.startswith(word):
        proc.kill()
        raise RuntimeError(f"benchmark worker said {line!r} instead of {word}")


def _torch_available():
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None
    except Exception:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description="ResNet-50-FPN backbone benchmark, minimask vs torch")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile one minimask forward+backward")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], args.size, args.profile)
        return

    frameworks = ["minimask"] + (["torch"] if not args.no_torch and _torch_available() else [])
    res = {}
    for mode in ("forward", "forward+backward"):
        res.update(_run_mode(frameworks, mode, args))

    print(f"ResNet-50-FPN backbone, batch 1, 3x{args.size}x{args.size} float32, {args.threads} threads, "
          f"best of {args.repeat} (after 1 warm-up), the frameworks' runs alternating back to back")
    print("peak memory = rise of ru_maxrss over the value after imports + model build, fresh process each")
    header = f"{'':36s}{'minimask':>12s}"
    if "torch" in frameworks:
        header += f"{'torch':>12s}{'ratio':>10s}"
    print(header)
    for mode in ("forward", "forward+backward"):
        for key, label, unit in (("time_s", "time", "s"), ("cpu_s", "CPU time", "s"), ("peak_mb", "peak memory", "MB")):
            m = res["minimask", mode][key]
            line = f"{mode + ' ' + label + ' (' + unit + ')':36s}{m:12.3f}"
            if "torch" in frameworks:
                t = res["torch", mode][key]
                line += f"{t:12.3f}{m / t:10.2f}x" if t > 0 else f"{t:12.3f}{'n/a':>10s}"
            print(line)
    for mode in ("forward", "forward+backward"):
        print(f"minimask {mode}: numpy peak allocation (tracemalloc) {res['minimask', mode]['numpy_peak_mb']:.1f} MB;"
              f" all runs (s): " + ", ".join(f"{t:.2f}" for t in res["minimask", mode]["times"]))
        if "torch" in frameworks:
            print(f"torch    {mode}: all runs (s): " + ", ".join(f"{t:.2f}" for t in res["torch", mode]["times"]))
    if args.profile:
        print("\ncProfile of one minimask forward+backward (sorted by own time):")
        print(res["minimask", "forward+backward"]["profile"])


if __name__ == "__main__":
    main()
