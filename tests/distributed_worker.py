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
    """Soft mask targets: a binarised one at exactly 0.5 is what a last-bit difference flips first (chapter 16)."""
    cfg = with_overrides(small_config(num_classes=num_classes, min_size=64, max_size=64, width=16, base_width=16),
                         anchor_sizes=(16, 32, 64, 128, 256), mask_batch_size_per_image=2, mask_target_binarize=False)
    return MaskRCNN(cfg, rng=np.random.default_rng(SEED)).train()


def _total(losses):
    total = None
    for v in losses.values():
        total = v if total is None else total + v
    return total


def _copy(state):
    return {k: np.array(v) for k, v in state.items()}


def _max_rel(a, b, slack=0.0):
    """max |a - b| / max |b| over a tensor, after forgiving `slack` of absolute difference."""
    return max(float(np.abs(a - b).max()) - slack, 0.0) / max(float(np.abs(b).max()), 1e-30)


def _streams(items, it):
    """Each image's generator, keyed by (seed, iteration, image id) as train.py keys them."""
    return [np.random.default_rng([SEED, 2, it, int(t["image_id"])]) for _, t in items]


def train_steps(comm, data_dir, lockstep=False):
    """(a): train.py's step, by hand: share of the batch, per-image streams, global losses, summed gradients.

    lockstep (rank 0 of a multi-rank run): before each step a copy of the model and optimizer takes the
    whole batch in this process (the one-process step from the same weights); after it, rank 0 records
    how far the summed gradients, the new weights and the update are from that step's (`_max_rel`).
    Returns (model, step-1 gradients, log, per-step lockstep differences)."""
    ds = CocoDataset(*shapes_paths(data_dir, "train"))
    model = tiny_model(ds.num_classes)
    optimizer = SGD(param_groups(model, 1e-4, 0.0), lr=0.02, momentum=0.9)
    if lockstep:
        ref = tiny_model(ds.num_classes)
        ref_optimizer = SGD(param_groups(ref, 1e-4, 0.0), lr=0.02, momentum=0.9)
    log, first_grads, diffs, start = [], None, [], 0
    for it, n in enumerate(BATCHES):
        batch = [(start + j) % len(ds) for j in range(n)]
        start += n
        if lockstep:   # the one-process step on the whole batch, from this step's weights and optimizer state
            ref.load_state_dict(_copy(model.state_dict()))
            ref_optimizer.load_state_dict(_copy(optimizer.state_dict()))
            everything = [ds[i] for i in batch]
            before = {k: p.data.copy() for k, p in ref.named_parameters()}
            ref_optimizer.zero_grad()
            losses = ref([im for im, _ in everything], [t for _, t in everything], rng=_streams(everything, it))
            _total(losses).backward()
            ref_grads = {k: p.grad.copy() for k, p in ref.named_parameters() if p.grad is not None}
            clip_grad_norm_(ref.parameters(), 10.0)
            ref_optimizer.step()
        items = [ds[i] for i in distributed.shard(batch, comm.rank, comm.size)]
        images, targets = [im for im, _ in items], [t for _, t in items]
        losses = model(images, targets, rng=_streams(items, it)) if images else {}
        losses = distributed.global_losses(losses, model.loss_counts if images else {}, comm)
        values = comm.allreduce_sum(np.array([float(losses[k].data) if k in losses else 0.0
                                              for k in distributed.LOSS_NAMES]))
        optimizer.zero_grad()
        if losses:
            _total(losses).backward()
        distributed.allreduce_gradients(model.parameters(), comm)
        grads = {k: p.grad.copy() for k, p in model.named_parameters() if p.grad is not None}
        first_grads = grads if first_grads is None else first_grads
        norm = float(clip_grad_norm_(model.parameters(), 10.0))
        optimizer.step()
        log.append({"losses": values.tolist(), "grad_norm": norm, "images": len(images)})
        if lockstep:
            new = {k: p.data for k, p in model.named_parameters()}
            want = {k: p.data for k, p in ref.named_parameters()}
            diffs.append({"same_keys": sorted(grads) == sorted(ref_grads),
                          "grads": max(_max_rel(grads[k], g) for k, g in ref_grads.items()),
                          "weights": max(_max_rel(new[k], w) for k, w in want.items()),
                          "updates": max(_max_rel(new[k] - before[k], w - before[k]) for k, w in want.items()),
                          # an update is known only to the float32 spacing of the weight it was added to
                          "updates_to_spacing": max(_max_rel(new[k] - before[k], w - before[k],
                                                             float(np.spacing(np.abs(w).max())))
                                                    for k, w in want.items())})
    return model, first_grads, log, diffs


def main(data_dir, out_dir):
    comm = distributed.world()
    out = Path(out_dir)
    grads, info = allreduce_case(comm)
    model, first_grads, log, diffs = train_steps(comm, data_dir, lockstep=comm.rank == 0)
    # every rank must hold the very same weights: gathered on rank 0, compared bit for bit there
    weights = {k: p.data for k, p in model.named_parameters()}
    everyone = comm.gather(weights)
    val = CocoDataset(*shapes_paths(data_dir, "val"))
    results = predict_dataset(model, val, batch_size=2, progress=False, comm=comm)
    metrics = evaluate_model(model, val, batch_size=2, progress=False, verbose=False, comm=comm)
    if comm.rank == 0:
        # the one-process evaluation of the same weights, with this rank's BLAS threads (one): the equality the
        # test checks must not depend on the thread count, which can change GEMM blocking in the last bits
        alone = distributed.SingleProcess()
        one_results = predict_dataset(model, val, batch_size=2, progress=False, comm=alone)
        one_metrics = evaluate_model(model, val, batch_size=2, progress=False, verbose=False, comm=alone)
        same = all(np.array_equal(w[k], weights[k]) for w in everyone for k in weights)
        np.savez(out / "allreduce.npz", **grads)
        np.savez(out / "first_grads.npz", **first_grads)
        save_state_dict(model.state_dict(), out / "weights.npz")
        (out / "report.json").write_text(json.dumps({**info, "size": comm.size, "log": log, "lockstep": diffs,
                                                     "same_weights": same, "results": results, "metrics": metrics,
                                                     "one_process": {"results": one_results, "metrics": one_metrics}}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
