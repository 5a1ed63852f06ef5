"""SIGKILL during checkpoint writes, then --resume: shared by tests/test_faults.py and benchmarks/faults.py.

    python tests/fault_injection.py WRITE:OFFSET -- <python -m minimask.train flags>

runs the training CLI and SIGKILLs its own process during checkpoint write number WRITE (the
WRITE-th `.tmp-*.npz` it opens, counted from 1) once OFFSET bytes of it are on disk; an OFFSET
past the file's end kills it after the last byte, just before the rename. The kill is a real
SIGKILL (no handler, no cleanup); nothing in minimask is patched but the file the bytes go to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class _KillingFile:
    """Passes writes through to `f` until `offset` bytes are written, then dies mid-write."""

    def __init__(self, f, offset):
        self.f, self.offset, self.n = f, offset, 0

    def write(self, b):
        b = memoryview(b).cast("B")
        if self.n + len(b) > self.offset:
            self.f.write(b[: self.offset - self.n])
            self.f.flush()
            _die()
        self.n += len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def arm(write_no, offset):
    """Patch os.fdopen / os.replace of this process so that checkpoint write `write_no` dies at `offset`."""
    real_fdopen, real_replace = os.fdopen, os.replace
    state = {"count": 0}

    def is_temp_npz(name):
        base = os.path.basename(str(name))
        return base.startswith(".tmp-") and base.endswith(".npz")

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if mode == "wb" and is_temp_npz(os.readlink(f"/proc/self/fd/{fd}")):
            state["count"] += 1
            if state["count"] == write_no:
                return _KillingFile(f, offset)
        return f

    def replace(src, dst, *args, **kwargs):
        if is_temp_npz(src) and state["count"] == write_no:
            _die()    # every byte written, not yet renamed
        return real_replace(src, dst, *args, **kwargs)

    os.fdopen, os.replace = fdopen, replace


def train_command(flags, kill=None):
    """argv running the training CLI, optionally through this file's kill switch (write_no, offset)."""
    if kill is None:
        return [sys.executable, "-m", "minimask.train", *flags]
    return [sys.executable, str(HERE), f"{kill[0]}:{kill[1]}", "--", *flags]


def run(flags, kill=None, cwd=None, timeout=600):
    """Run the CLI; returns the CompletedProcess (returncode -9 when the kill fired)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(train_command(flags, kill), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def final_weights(run_dir):
    with np.load(Path(run_dir) / "model_final.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k != "meta"}


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def unreadable_checkpoints(run_dir):
    """Checkpoint files (final names) in run_dir that do not read back whole."""
    from minimask.checkpoint import CheckpointError, list_checkpoints, read_checkpoint

    bad = []
    for p in list_checkpoints(run_dir):
        try:
            read_checkpoint(p)
        except CheckpointError:
            bad.append(p)
    return bad


def kill_points(rng, n, writes, size):
    """n seeded (write number, byte offset) pairs; about 1 in 10 lands after the last byte (before the rename)."""
    return [(int(rng.integers(1, writes + 1)), int(rng.integers(0, int(size * 1.1) + 1))) for _ in range(n)]


if __name__ == "__main__":
    spec, sep, *train_flags = sys.argv[1:]
    assert sep == "--", "usage: fault_injection.py WRITE:OFFSET -- <train flags>"
    write_no, offset = (int(v) for v in spec.split(":"))
    arm(write_no, offset)
    from minimask.train import main

    sys.exit(main(train_flags))
