"""Data parallelism (distributed.py): N ranks under mpiexec train and evaluate as one process does.

The multi-rank tests start `mpiexec -n 2` with CPU ranks (one BLAS thread each): tests/distributed_worker.py
for the all-reduce, training steps and the parallel evaluation, `python -m minimask.train` for the CLI.
They are skipped, saying so, only when the `mpi` extra (mpi4py and MPICH's mpiexec) is absent.

Tolerances. A 2-rank step sums each gradient in a different order from the 1-rank step (two shards'
sums all-reduced, float32), and the batch-of-2 GEMMs may block differently from the batch-of-4: each of
4 steps' gradients, new weights and updates agree with the one-process step from the same state to 1e-5
of each tensor's largest entry. The parallel evaluation of one set of weights runs the same batches through the same
arithmetic: equal exactly. Training amplifies last-bit differences about tenfold per step after the
first few (one process with the engines off drifts from one with them on the same way: chapter 16):
a last-bit difference flips a discrete choice (a binarised mask target at exactly 0.5 above all, then a
top-k cut or an IoU threshold) and the flip grows. So the models here train on soft mask targets and
the CLI runs are compared over 5 iterations: they agree to 6e-7, engines on or off (MINIMASK_REFERENCE=1).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minimask
from minimask import distributed
from minimask.data import CocoDataset, shapes_paths
from minimask.matching import BalancedPositiveNegativeSampler, subsample_labels
from minimask.module import Parameter, load_state_file
from minimask.tape import Tensor
from minimask.train import main, run_cli

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# soft mask targets (set=...): binarised ones threshold RoIAligned masks at 0.5, the discrete choice a last-bit
# difference flips most easily (chapter 16); with them the runs below drift apart from iteration ~4 on some setups
TINY = dict(num_train_images=8, num_val_images=5, image_size=64, min_size=64, max_size=64, width=16, base_width=16,
            batch_size=4, milestones=(100,), warmup_iters=2, log_every=1, eval_limit=2, num_workers=1,
            set=("mask_target_binarize=False",))


def _mpiexec():
    """MPICH's mpiexec beside this Python (the `mpich` wheel puts it in the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
    reason="needs the mpi extra (pip install -e '.[mpi]': mpi4py and MPICH's mpiexec) to start 2 ranks")


def run_ranks(n, args, cwd, timeout=240):
    """`mpiexec -n n python args...` with this checkout's minimask and one BLAS thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = ([_mpiexec(), "-n", str(n)] if n else []) + [sys.executable, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------
# one process: the pieces
# ------------------------------------------------------------------------------------------------


def test_without_mpiexec_one_process_and_no_mpi4py(monkeypatch):
    for v in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", None)
    comm = distributed.world()
    assert isinstance(comm, distributed.SingleProcess) and (comm.rank, comm.size) == (0, 1)
    assert "mpi4py" not in sys.modules          # nothing imported MPI: a plain run needs no MPI library
    x = np.arange(3.0)
    assert comm.allreduce_sum(x) is x and comm.gather(5) == [5] and comm.bcast("a") == "a"
    losses = {"loss_mask": Tensor(np.float32(0.5))}
    assert distributed.global_losses(losses, {"loss_mask": 7}, comm) is losses   # bit for bit: untouched


def test_shard_splits_contiguously_and_covers_the_batch():
    for n in range(0, 9):
        for size in (1, 2, 3, 4):
            parts = [distributed.shard(list(range(n)), r, size) for r in range(size)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(distributed.DistributedError, match="multiple of 4"):
        distributed.check_batch_size(6, 4)


def test_buckets_respect_the_cap_and_flatten_round_trips(rng):
    shapes = [(3, 4), (5,), (2, 2, 2), (4, 4), (6, 5)]
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    groups = distributed.buckets(params, cap_bytes=64)
    assert [[tuple(p.shape) for p in g] for g in groups] == [[(3, 4)], [(5,), (2, 2, 2)], [(4, 4)], [(6, 5)]]
    assert sum(groups, []) == params                         # every parameter once, in order
    assert len(distributed.buckets(params)) == 1             # 25 MB holds them all
    arrays = [p.data for p in params]
    buf = distributed.flatten(arrays + [None], shapes + [(2,)], np, np.float32)
    assert buf.shape == (sum(a.size for a in arrays) + 2,) and not buf[-2:].any()
    for a, b in zip(arrays, distributed.unflatten(buf, shapes), strict=False):
        np.testing.assert_array_equal(a, b)


def test_device_gradients_are_bucketed_on_the_device_without_a_sync(rng):
    """Up to the all-reduce call the GPU path is the host path: buckets flattened and unflattened on
    the device (the stand-in counts every way back to the host: none), the call handed device buffers."""
    from minimask.backend import is_cupy_array
    from minimask.testing import fake_cuda as fc

    shapes = [(3, 4), (5,), (6, 5)]
    params = [Parameter(fc.asarray(rng.standard_normal(s).astype(np.float32))) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for p, g in zip(params, grads, strict=True):
        p.grad = fc.asarray(g)
    seen = []

    def doubling_allreduce_(buf):          # stands for NCCL: a sum over two ranks holding the same gradients
        seen.append(is_cupy_array(buf))
        buf[:] = buf * 2

    fc.reset_counters()
    nbytes = distributed.sum_in_buckets(params, doubling_allreduce_, cap_bytes=64)
    assert fc.sync_count() == 0 and seen == [True, True, True] and nbytes == 4 * (12 + 5 + 30)
    for p, g in zip(params, grads, strict=True):
        assert is_cupy_array(p.grad)
        np.testing.assert_array_equal(p.grad.get(), 2 * g)


def test_resume_with_another_number_of_processes_is_refused():
    distributed.check_resume({"world_size": 2}, 2, "ck.npz")
    distributed.check_resume({}, 1, "old.npz")                 # saved before distributed runs: one process
    with pytest.raises(distributed.DistributedError, match="saved by a run on 2 process.*this run has 1.*mpiexec -n 2"):
        distributed.check_resume({"world_size": 2}, 1, "ck.npz")


def test_sampler_draws_per_image_whatever_the_split(rng):
    labels = [rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), size=500, p=[0.2, 0.7, 0.1]) for _ in range(4)]
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    streams = lambda ids: [np.random.default_rng([0, 2, 7, i]) for i in ids]   # noqa: E731
    whole = sampler.sample(labels, streams(range(4)))
    split = sampler.sample(labels[:1], streams([0])) + sampler.sample(labels[1:], streams([1, 2, 3]))
    for (p, n), (q, m) in zip(whole, split, strict=True):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(n, m)
    # one Generator: a single stream drawn image after image, exactly as before per-image streams existed
    g, h = np.random.default_rng(3), np.random.default_rng(3)
    for (p, n), lab in zip(sampler.sample(labels, g), labels, strict=True):
        q, m = subsample_labels(lab, 64, 0.25, h)
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(n, m)
    with pytest.raises(ValueError, match="3 random generators for a batch of 4"):
        sampler.sample(labels, streams(range(3)))


def test_model_samples_per_image_whatever_the_split(shapes_dir):
    """The whole model on 4 images, then on shares of 1 and 3: the same anchors, RoIs and mask RoIs
    (the counts add up, and count-weighted losses add up to the whole batch's)."""
    ds = CocoDataset(*shapes_paths(shapes_dir, "train"))
    items = [ds[i] for i in range(4)]

    def run(idx):
        model = worker.tiny_model(ds.num_classes)
        rngs = [np.random.default_rng([0, 2, 0, int(items[i][1]["image_id"])]) for i in idx]
        losses = model([items[i][0] for i in idx], [items[i][1] for i in idx], rng=rngs)
        return {k: float(v.data) * model.loss_counts[k] for k, v in losses.items()}, model.loss_counts

    (whole, n_whole), (a, n_a), (b, n_b) = run([0, 1, 2, 3]), run([0]), run([1, 2, 3])
    assert {k: n_a[k] + n_b[k] for k in n_whole} == n_whole
    assert n_whole["loss_mask"] > 0
    for k in whole:
        assert a[k] + b[k] == pytest.approx(whole[k], rel=1e-5), k


# ------------------------------------------------------------------------------------------------
# two ranks: the all-reduce, 4 training steps, the parallel evaluation (one mpiexec for all three)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks")
    proc = run_ranks(2, [str(Path(worker.__file__)), str(shapes_dir), str(out)], cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["size"] == 2
    return out, report


@pytest.fixture(scope="module")
def one_rank(shapes_dir):
    """The same steps in this process, on the whole batch."""
    return worker.train_steps(distributed.SingleProcess(), shapes_dir)


@needs_mpi
def test_bucketed_allreduce_sums_in_few_buffers(two_ranks):
    out, report = two_ranks
    # CAP = 64 bytes: [g0 48 B], [g1 20 B + g2 32 B], [g4 64 B], then a float64 bucket [g5] and [g6] (120 B,
    # over the cap: alone); g3 has a gradient on no rank, so it is not sent at all
    assert report["bucket_sizes"] == [12, 5 + 8, 16, 3, 30]
    assert report["bytes"] == 4 * (12 + 13 + 16) + 8 * 3 + 4 * 30
    assert report["none"] == [False, False, False, True, False, False, False]
    got = np.load(out / "allreduce.npz")
    for i, (shape, dtype, who) in enumerate(worker.GRADS):
        if who == "none":
            assert f"g{i}" not in got.files
            continue
        ranks_with_it = 1 + 2 if who == "all" else 1            # rank r sent (r + 1) * arange
        want = (ranks_with_it * np.arange(int(np.prod(shape)), dtype=dtype)).reshape(shape)
        np.testing.assert_array_equal(got[f"g{i}"], want)
        assert got[f"g{i}"].dtype == dtype


def _assert_close(a, b, name, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(float(np.abs(b).max()), 1e-12), err_msg=name)


@needs_mpi
def test_two_rank_steps_equal_one_rank_steps_on_the_union_batch(two_ranks, one_rank):
    """4 steps; before each, rank 0 also takes the step as one process on the whole batch from the same
    weights and optimizer state (distributed_worker.train_steps(lockstep=True)); each step's summed
    gradients, new weights and weight updates equal that step's. (Comparing two free-running runs instead
    would compare where training amplified last-bit differences: chapter 16.)"""
    out, report = two_ranks
    assert report["same_weights"]                          # every rank holds the same weights after 4 steps
    assert [r["images"] for r in report["log"]] == [2, 2, 2, 0]   # rank 0 sat the last step out: zeros
    steps = report["lockstep"]
    assert len(steps) == len(worker.BATCHES) and all(s["same_keys"] for s in steps)
    for it, s in enumerate(steps, start=1):
        # to 1e-5 of each tensor's largest entry; an update is known only to the float32 spacing of its weight
        assert max(s["grads"], s["weights"], s["updates_to_spacing"]) <= 1e-5, (it, s)
    # step 1 also against this process's own run (the worker's reference is not the only witness)
    _, first_grads, log, _ = one_rank
    got = np.load(out / "first_grads.npz")
    assert set(got.files) == set(first_grads)
    for k, g in first_grads.items():
        _assert_close(got[k], g, k)
    np.testing.assert_allclose(report["log"][0]["losses"], log[0]["losses"], rtol=1e-5)
    assert report["log"][0]["grad_norm"] == pytest.approx(log[0]["grad_norm"], rel=1e-5)


@needs_mpi
def test_parallel_evaluation_equals_one_process(two_ranks, shapes_dir):
    out, report = two_ranks
    val = CocoDataset(*shapes_paths(shapes_dir, "val"))
    model = worker.tiny_model(val.num_classes)
    model.load_state_dict(load_state_file(out / "weights.npz"))
    # 5 images in batches of 2: rank 0 predicted batch [0, 1], rank 1 batches [2, 3] and [4]; rank 0 then
    # predicted all 5 as one process (the same BLAS threads as the ranks: the equality is exact)
    one = report["one_process"]
    assert len(one["results"]) > 0
    assert report["results"] == one["results"]          # the same list, in the same order
    assert report["metrics"] == one["metrics"]
    # and this process (its own BLAS threads, which may round GEMMs differently in the last bits) agrees
    results = worker.predict_dataset(model, val, batch_size=2, progress=False)
    assert [(r["image_id"], r["category_id"]) for r in results] == [(r["image_id"], r["category_id"])
                                                                     for r in one["results"]]
    np.testing.assert_allclose([r["score"] for r in results], [r["score"] for r in one["results"]], rtol=1e-5)
    np.testing.assert_allclose([r["bbox"] for r in results], [r["bbox"] for r in one["results"]], rtol=1e-5,
                               atol=1e-4)


# ------------------------------------------------------------------------------------------------
# the training CLI on two ranks
# ------------------------------------------------------------------------------------------------


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _flags(data, out, iterations):
    flags = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    return [*flags, f"--data-dir={data}", f"--output-dir={out}", f"--iterations={iterations}",
            "--checkpoint-every=5"]


@needs_mpi
def test_train_cli_on_two_ranks_resumes_and_refuses_another_count(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    proc = run_ranks(2, ["-m", "minimask.train", *_flags(data, out, 5)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained 5 iterations") == 1               # rank 0 alone prints
    rows = _rows(out)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]             # rank 0 alone logs: each line once
    manifest = set(json.loads((out / "manifest.json").read_text())["files"])
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == manifest and "checkpoint_0000005.npz" in on_disk  # nothing written but the run's files
    meta = json.loads(str(np.load(out / "checkpoint_0000005.npz")["meta"]))
    assert meta["world_size"] == 2

    # one process on the same global batches: the same losses (the ranks' shares add up). It runs as the ranks
    # do, with one BLAS thread: pytest's own thread count can round GEMMs differently in the last bits, and
    # training amplifies that (iteration 3's loss_classifier 3e-4 apart with the engines off, in CI)
    proc = run_ranks(0, ["-m", "minimask.train", *_flags(data, tmp_path / "one", 5)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for a, b in zip(rows, _rows(tmp_path / "one"), strict=True):
        for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), (a["iteration"], k)

    proc = run_ranks(2, ["-m", "minimask.train", *_flags(data, out, 7), "--resume"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("resumed from") == 1
    assert [r["iteration"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6, 7]

    ckpt = str(out / "checkpoint_0000007.npz")                            # the evaluation CLI on 2 ranks
    proc = run_ranks(2, ["-m", "minimask.evaluate", "--checkpoint", ckpt, "--output-dir", str(tmp_path / "ev2"),
                         "--limit", "5"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count("segm AP") == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one process, with the ranks' single BLAS thread (the thread count can move GEMMs' last bits): equal files
    proc = run_ranks(0, ["-m", "minimask.evaluate", "--checkpoint", ckpt, "--output-dir", str(tmp_path / "ev1"),
                         "--limit", "5"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("metrics.json", "results.json"):
        assert (tmp_path / "ev2" / name).read_text() == (tmp_path / "ev1" / name).read_text(), name

    capsys.readouterr()
    assert run_cli(main, _flags(data, out, 9) + ["--resume"]) == 2       # one process: refused, nothing run
    err = capsys.readouterr().err
    assert "saved by a run on 2 process(es) and this run has 1" in err and "mpiexec -n 2" in err
    assert [r["iteration"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6, 7]


def test_package_is_this_checkout():
    """The ranks import this checkout's minimask (PYTHONPATH), as this process does."""
    assert Path(minimask.__file__).resolve().parents[1] == ROOT
