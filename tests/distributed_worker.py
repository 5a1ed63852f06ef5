"""What each rank of tests/test_distributed.py's `mpiexec -n 2` run does (and, in the test's own
process, the one-process reference): not a test module itself.

    mpiexec -n 2 python tests/distributed_worker.py DATA_DIR OUT_DIR

(b) the bucketed all-reduce of hand-made gradients; (a) training steps of a tiny model on global
batches of BATCHES shapes images, each rank on its share, written as train.py does it (the last
batch of 1 leaves rank 0 without an image: it adds zero losses and zero gradients); (c) the
parallel evaluation of the trained model. Rank 0 writes what it saw into OUT_DIR.
"""

import json
import sys
from pathlib import Path

import numpy as np

from minimask import distributed
from minimask.coco_eval import evaluate_model, predict_dataset
from minimask.config import with_overrides
from minimask.data import CocoDataset, shapes_paths
from minimask.model import MaskRCNN, small_config
from minimask.module import Parameter, save_state_dict
from minimask.optim import SGD, clip_grad_norm_, param_groups

BATCHES, SEED = (4, 4, 4, 1), 0       # global batch size of each step
# (shape, dtype, which ranks have a gradient): a float64 one starts a bucket of its own dtype; one
# parameter gets a gradient on rank 0 only, one on no rank at all (it must stay None)
GRADS = [((3, 4), np.float32, "all"), ((5,), np.float32, "all"), ((2, 2, 2), np.float32, "rank 0"),
         ((7,), np.float32, "none"), ((4, 4), np.float32, "all"), ((3,), np.float64, "all"),
         ((6, 5), np.float32, "all")]
CAP = 64   # bytes per bucket in (b): several buckets from a few small tensors


def allreduce_case(comm):
    """(b): gradients rank r = (r + 1) * arange: their sum is exact in floating point."""
    params = []
    for shape, dtype, who in GRADS:
        p = Parameter(np.zeros(shape, dtype))
        n = int(np.prod(shape))
        if who == "all" or (who == "rank 0" and comm.rank == 0):
            p.grad = ((comm.rank + 1) * np.arange(n, dtype=dtype)).reshape(shape)
        params.append(p)
    calls = []
    original = comm.allreduce_sum_
    comm.allreduce_sum_ = lambda buf: calls.append(buf.size) or original(buf)
    nbytes = distributed.allreduce_gradients(params, comm, cap_bytes=CAP)
    comm.allreduce_sum_ = original
    grads = {f"g{i}": p.grad for i, p in enumerate(params) if p.grad is not None}
    return grads, {"bucket_sizes": calls, "bytes": nbytes, "none": [p.grad is None for p in params]}


def tiny_model(num_classes):
    cfg = with_overrides(small_config(num_classes=num_classes, min_size=64, max_size=64, width=16, base_width=16),
                         anchor_sizes=(16, 32, 64, 128, 256), mask_batch_size_per_image=2)
    return MaskRCNN(cfg, rng=np.random.default_rng(SEED)).train()


def train_steps(comm, data_dir):
    """(a): train.py's step, by hand: share of the batch, per-image streams, global losses, summed gradients."""
    ds = CocoDataset(*shapes_paths(data_dir, "train"))
    model = tiny_model(ds.num_classes)
    optimizer = SGD(param_groups(model, 1e-4, 0.0), lr=0.02, momentum=0.9)
    log, first_grads, start = [], None, 0
    for it, n in enumerate(BATCHES):
        batch = [(start + j) % len(ds) for j in range(n)]
        start += n
        items = [ds[i] for i in distributed.shard(batch, comm.rank, comm.size)]
        images, targets = [im for im, _ in items], [t for _, t in items]
        rngs = [np.random.default_rng([SEED, 2, it, int(t["image_id"])]) for t in targets]
        losses = model(images, targets, rng=rngs) if images else {}
        losses = distributed.global_losses(losses, model.loss_counts if images else {}, comm)
        values = comm.allreduce_sum(np.array([float(losses[k].data) if k in losses else 0.0
                                              for k in distributed.LOSS_NAMES]))
        optimizer.zero_grad()
        if losses:
            total = None
            for v in losses.values():
                total = v if total is None else total + v
            total.backward()
        distributed.allreduce_gradients(model.parameters(), comm)
        if first_grads is None:
            first_grads = {k: p.grad.copy() for k, p in model.named_parameters() if p.grad is not None}
        norm = float(clip_grad_norm_(model.parameters(), 10.0))
        optimizer.step()
        log.append({"losses": values.tolist(), "grad_norm": norm, "images": len(images)})
    return model, first_grads, log


def main(data_dir, out_dir):
    comm = distributed.world()
    out = Path(out_dir)
    grads, info = allreduce_case(comm)
    model, first_grads, log = train_steps(comm, data_dir)
    # every rank must hold the very same weights: gathered on rank 0, compared bit for bit there
    weights = {k: p.data for k, p in model.named_parameters()}
    everyone = comm.gather(weights)
    val = CocoDataset(*shapes_paths(data_dir, "val"))
    results = predict_dataset(model, val, batch_size=2, progress=False, comm=comm)
    metrics = evaluate_model(model, val, batch_size=2, progress=False, verbose=False, comm=comm)
    if comm.rank == 0:
        same = all(np.array_equal(w[k], weights[k]) for w in everyone for k in weights)
        np.savez(out / "allreduce.npz", **grads)
        np.savez(out / "first_grads.npz", **first_grads)
        save_state_dict(model.state_dict(), out / "weights.npz")
        (out / "report.json").write_text(json.dumps({**info, "size": comm.size, "log": log, "same_weights": same,
                                                     "results": results, "metrics": metrics}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
