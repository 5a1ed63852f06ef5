"""Data parallelism: N processes train one model exactly as one process would on their union batch.

Launch:  mpiexec -n N python -m minimask.train ...   (MPICH's mpiexec: `pip install -e '.[mpi]'`)
         Without mpiexec `world()` is `SingleProcess`, every collective the identity, and mpi4py is
         never imported.
A step:  every rank builds the same model from the same seed and reads its contiguous share of
         the global batch (`shard`); each image draws its anchor and RoI samples from its own
         generator (keyed by seed, iteration and image id: matching.per_image), so the shards sample
         what the whole batch would. `global_losses` turns each rank's loss means into its share of
         the global means (one all-reduce of five counts); after the backward `allreduce_gradients`
         sums the gradients over the ranks, flattened into a few buckets of <= 25 MB (DDP's default
         bucket size), one all-reduce per bucket. The summed gradient is identical on every rank, so
         clipping and the SGD step keep the weights identical too.
Why equal: loss_r = sum of rank r's terms / the GLOBAL count, so sum_r loss_r is the union batch's
         loss and sum_r grad loss_r its gradient. Normalising by each rank's own count instead (what
         DDP does with torchvision's losses) would weigh a rank's few samples as much as another's
         many. A 2-rank step equals a 1-rank step up to float summation order
         (tests/test_distributed.py). Not covered: shards whose images differ in size pad to
         different batch shapes (GroupNorm statistics and the anchors in the padding change), as in
         DDP; same-size images (the shapes data) are exact.
Devices: host arrays are summed by MPI's Allreduce; device (CuPy) arrays by NCCL on the current
         stream, with no host round trip (the NCCL id travels over MPI once). Rank r computes on GPU
         r mod (GPUs of its node): `select_device`.
Chapter: nbs/16_data_parallel.ipynb
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import numpy as np

from .backend import get_array_module, is_cupy_array, nccl_module, to_device, to_host
from .errors import MinimaskError
from .layers import mul

# set in every process an mpiexec starts (MPICH's Hydra: PMI_*, Open MPI: OMPI_* / PMIX_*)
LAUNCH_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
BUCKET_BYTES = 25 * 2**20       # gradient bytes per all-reduce (torch DDP's bucket_cap_mb = 25)
LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class DistributedError(MinimaskError):
    """A run that cannot be spread over these processes as asked; the message says what to change."""


# --- communicators -------------------------------------------------------------------------------

class SingleProcess:
    """The communicator of a process mpiexec did not start: rank 0 of 1, every collective the identity."""

    rank, size, local_rank = 0, 1, 0

    def allreduce_sum(self, x):
        return x

    def allreduce_sum_(self, buf):
        return buf

    def bcast(self, obj):
        return obj

    def gather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code):
        raise SystemExit(code)


class MPIComm:
    """MPI_COMM_WORLD through mpi4py: MPI's Allreduce for host arrays, NCCL for device arrays."""

    def __init__(self):
        try:   # imported here, not at the top: only a process started by mpiexec needs MPI
            from mpi4py import MPI
        except ImportError:
            raise DistributedError("started by mpiexec, but mpi4py is not installed: pip install -e '.[mpi]'") \
                from None
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()   # among this node's ranks
        self._nccl = None

    def allreduce_sum(self, x):
        """The element-wise sum over the ranks of a host array (a new array, the same on every rank)."""
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        self.comm.Allreduce(x, out, op=self.MPI.SUM)
        return out

    def allreduce_sum_(self, buf):
        """Sum a flat, contiguous buffer over the ranks in place, on its own device."""
        if not is_cupy_array(buf):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        elif type(buf).__module__.startswith("cupy"):
            self._nccl_allreduce_(buf)
        else:   # the stand-in device (minimask.testing.fake_cuda) is NumPy underneath: through the host
            host = to_host(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf[:] = to_device(host, get_array_module(buf))
        return buf

    def _nccl_allreduce_(self, buf):
        if self._nccl is None:   # once, on every rank together
            self._nccl = NCCL(self.rank, self.size, self.bcast)
        self._nccl.allreduce_sum_(buf)

    def bcast(self, obj):
        """Rank 0's `obj` on every rank (any picklable Python object)."""
        return self.comm.bcast(obj, root=0)

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on rank 0; None on the others."""
        return self.comm.gather(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        self.comm.Abort(code)


class NCCL:
    """NCCL's all-reduce of CuPy buffers among `size` ranks (one GPU each): rank 0 makes the
    communicator's id, `bcast` (MPI's) hands it to the others. benchmarks/gpu.py runs one rank."""

    def __init__(self, rank, size, bcast):
        self.nccl = nccl_module()
        uid = bcast(self.nccl.get_unique_id() if rank == 0 else None)
        self.comm = self.nccl.NcclCommunicator(size, uid, rank)

    def allreduce_sum_(self, buf):
        """Sum a flat device buffer over the ranks in place, queued on the current stream (no sync)."""
        nccl = self.nccl
        types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        stream = get_array_module(buf).cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, types[buf.dtype.name], nccl.NCCL_SUM, stream.ptr)
        return buf


_WORLD = None


def world():
    """The processes of this run: `MPIComm` under mpiexec (the same object on every call), else `SingleProcess`."""
    global _WORLD
    if _WORLD is None:
        _WORLD = MPIComm() if any(v in os.environ for v in LAUNCH_VARIABLES) else SingleProcess()
    return _WORLD


# --- what each rank does -------------------------------------------------------------------------

def shard(items, rank, size):
    """Rank `rank`'s contiguous share of the list `items`: shares differ by at most one item (the
    later ranks take the extra ones) and, concatenated in rank order, are `items` again."""
    n = len(items)
    return items[n * rank // size: n * (rank + 1) // size]


def check_batch_size(batch_size, size):
    if batch_size % size:
        raise DistributedError(f"--batch-size {batch_size} (the global batch) does not split evenly over {size} "
                               f"processes: make it a multiple of {size}")


def check_resume(meta, size, path):
    """Refuse to resume a checkpoint saved by a run on a different number of processes."""
    saved = int(meta.get("world_size", 1))   # checkpoints from before distributed runs: one process
    if saved != size:
        how = f"mpiexec -n {saved} python -m minimask.train ..." if saved > 1 else "python -m minimask.train ..."
        raise DistributedError(f"--resume: {path} was saved by a run on {saved} process(es) and this run has "
                               f"{size}; a run keeps its number of processes: resume it with `{how} --resume`")


def lead_first(comm, fn):
    """fn() on rank 0, then on the others: rank 0 writes (a generated dataset) what the others then read."""
    out = fn() if comm.rank == 0 else None
    comm.barrier()
    return out if comm.rank == 0 else fn()


def select_device(comm, xp):
    """Rank r computes on GPU r mod (GPUs of its node); call before the model is built. NumPy: nothing."""
    if getattr(xp, "__name__", "") == "cupy":
        xp.cuda.Device(comm.local_rank % xp.cuda.runtime.getDeviceCount()).use()


@contextlib.contextmanager
def one_fails_all_fail(comm):
    """An exception escaping one rank of a multi-process run ends every rank (MPI_Abort) once it is
    printed: the others would wait for that rank forever in their next collective. One process:
    the exception propagates as usual."""
    try:
        yield
    except Exception as e:
        if comm.size == 1:
            raise
        text = f"error: {e}" if isinstance(e, MinimaskError) else traceback.format_exc()
        print(f"[rank {comm.rank}] {text}", file=sys.stderr, flush=True)
        comm.abort(2 if isinstance(e, MinimaskError) else 1)


# --- the two all-reduces of a training step ------------------------------------------------------

def global_losses(losses, counts, comm):
    """Each rank's loss means -> its share of the global means: summed over ranks, the union batch's losses.

    losses: {name: 0-d Tensor}, `name` a mean over counts[name] terms of this rank's batch (`model.
    loss_counts`; {} and {} on a rank with no image this step). Each becomes mean * count / (count
    summed over the ranks) = this rank's sum / the global count: one all-reduce of five host ints, no
    device sync. One process: `losses` itself, bit for bit.
    """
    if comm.size == 1:
        return losses
    total = comm.allreduce_sum(np.array([counts.get(k, 0) for k in LOSS_NAMES], dtype=np.float64))
    total = dict(zip(LOSS_NAMES, total, strict=True))
    return {k: mul(v, float(counts[k] / max(total[k], 1.0))) for k, v in losses.items()}


def buckets(params, cap_bytes=BUCKET_BYTES):
    """`params` in order, cut into runs of one dtype whose gradients fill at most `cap_bytes`
    (a parameter larger than that is a bucket of its own), as DDP's buckets."""
    out, size = [], 0
    for p in params:
        nbytes = p.data.size * p.data.dtype.itemsize
        if not out or size + nbytes > cap_bytes or p.data.dtype != out[-1][0].data.dtype:
            out.append([])
            size = 0
        out[-1].append(p)
        size += nbytes
    return out


def flatten(arrays, shapes, xp, dtype):
    """One flat buffer holding `arrays` one after another (None: zeros of that shape)."""
    sizes = [int(np.prod(s)) for s in shapes]
    buf = xp.empty((sum(sizes),), dtype=dtype)
    start = 0
    for a, n in zip(arrays, sizes, strict=True):
        buf[start:start + n] = 0 if a is None else a.reshape(-1)
        start += n
    return buf


def unflatten(buf, shapes):
    """The inverse of `flatten`: views of `buf`, one per shape."""
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(buf[start:start + n].reshape(s))
        start += n
    return out


def allreduce_gradients(params, comm, cap_bytes=BUCKET_BYTES):
    """Sum every parameter's gradient over the ranks, in place, one all-reduce per bucket.

    A parameter no rank has a gradient for keeps `grad = None` (SGD skips it, as one process would);
    where only some ranks have one, the others add zeros. Who has one is a host fact: one small
    all-reduce of flags, no device sync. Returns the gradient bytes summed (0 in one process).
    """
    if comm.size == 1:
        return 0
    params = [p for p in params if p.requires_grad]
    has = comm.allreduce_sum(np.array([p.grad is not None for p in params], dtype=np.float64))
    params = [p for p, h in zip(params, has, strict=True) if h > 0]
    return sum_in_buckets(params, comm.allreduce_sum_, cap_bytes)


def sum_in_buckets(params, allreduce_, cap_bytes=BUCKET_BYTES):
    """Each bucket's gradients flattened into one buffer, `allreduce_(buffer)` (in place: MPI on the
    host, NCCL on a GPU), the sums unflattened back into `grad`; returns the bytes all-reduced."""
    nbytes = 0
    for group in buckets(params, cap_bytes):
        shapes = [tuple(p.data.shape) for p in group]
        buf = flatten([p.grad for p in group], shapes, get_array_module(group[0].data), group[0].data.dtype)
        allreduce_(buf)
        for p, g in zip(group, unflatten(buf, shapes), strict=True):
            p.grad = g
        nbytes += buf.size * buf.dtype.itemsize
    return nbytes


__all__ = ["BUCKET_BYTES", "DistributedError", "LOSS_NAMES", "MPIComm", "NCCL", "SingleProcess", "allreduce_gradients",
           "buckets", "check_batch_size", "check_resume", "flatten", "global_losses", "lead_first",
           "one_fails_all_fail", "select_device", "shard", "sum_in_buckets", "unflatten", "world"]
