"""Exercises of chapter 16, data parallelism: a rank's share of the global batch, the global loss from the
ranks' means (why a DDP-style average of means is not the union batch's loss), and the gradient buckets.

Chapter: nbs/16_data_parallel.ipynb
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..distributed import buckets, shard
from ._core import check_forward, exercise

# ------------------------------------------------------------------------------------------------
# 16.1 a rank's share of the global batch
# ------------------------------------------------------------------------------------------------

SHARE_PROBES = [(list(range(4)), 0, 2), (list(range(4)), 1, 2), (list(range(5)), 0, 2), (list(range(5)), 1, 2),
                (list(range(7)), 0, 3), (list(range(7)), 1, 3), (list(range(7)), 2, 3), (list(range(2)), 2, 4),
                (list(range(10, 16)), 1, 4)]


def _share_ref(items, rank, size):
    return list(shard(items, rank, size))


@exercise("16.1", "rank_share",
          "rank `rank` of `size`'s contiguous share of the global batch `items` (a list): shares differ by at most "
          "one item, the later ranks take the extra ones, and in rank order they are `items` again")
def check_rank_share(fn):
    def floor_chunks(items, rank, size):
        k = len(items) // size
        return list(items[rank * k:(rank + 1) * k])

    def ceil_chunks(items, rank, size):
        k = -(-len(items) // size)
        return list(items[rank * k:(rank + 1) * k])

    mistakes = [
        ("strided shares (items[rank::size]): a valid split, but not the contiguous one minimask's loader reads "
         "(distributed.shard)", lambda items, rank, size: list(items[rank::size])),
        ("equal chunks of len(items) // size: the items left over when the batch does not split evenly are dropped",
         floor_chunks),
        ("chunks of ceil(len(items) / size): the first ranks take the extra items and a last rank can get nothing "
         "where another rank could have shared", ceil_chunks),
    ]
    return check_forward("16.1", fn, _share_ref, SHARE_PROBES, mistakes,
                         hint="rank r's share starts at floor(n r / size) and ends before floor(n (r + 1) / size).")


# ------------------------------------------------------------------------------------------------
# 16.2 the global loss from the ranks' means
# ------------------------------------------------------------------------------------------------


def _global_mean_ref(means, counts):
    """The union batch's mean: the ranks' sums (mean x count) added up, over the total count (0 if none)."""
    means, counts = np.asarray(means, np.float64), np.asarray(counts, np.float64)
    total = counts.sum()
    return float((means * counts).sum() / total) if total > 0 else 0.0


@exercise("16.2", "global_mean",
          "each rank's loss `means[r]`, a mean over `counts[r]` terms of its share (0 and 0 for a rank with no "
          "image) -> the mean over all terms of the global batch, as one process computes it")
def check_global_mean(fn):
    probes = [([0.5, 0.7], [256, 256]), ([0.2, 0.9], [30, 10]), ([1.0, 0.0], [5, 0]),
              ([0.3, 0.6, 0.1], [784, 2352, 1568]), ([0.25], [12]), ([0.0, 0.0], [0, 0])]

    def mean_of_means(means, counts):
        return float(np.mean(means))

    def mean_of_nonempty(means, counts):
        m = [x for x, c in zip(means, counts, strict=True) if c > 0]
        return float(np.mean(m)) if m else 0.0

    mistakes = [
        ("the mean of the ranks' means (averaging each rank's loss, as DDP's averaged gradients do): right only "
         "when every rank has the same count", mean_of_means),
        ("the mean of the non-empty ranks' means: still the ranks' means, weighted equally; weight each by its "
         "count", mean_of_nonempty),
        ("the sum of the ranks' means: each is already a mean; add the ranks' sums, then divide by the total count",
         lambda means, counts: float(np.sum(means))),
    ]
    return check_forward("16.2", fn, _global_mean_ref, probes, mistakes, rtol=1e-12, atol=1e-12,
                         hint="a mean times its count is a sum; sums add across ranks, counts too.")


# ------------------------------------------------------------------------------------------------
# 16.3 the gradient buckets
# ------------------------------------------------------------------------------------------------


def _bucket_lengths_ref(nbytes, dtypes, cap):
    """How many parameters each bucket of distributed.buckets holds, for gradients of these sizes and dtypes."""
    params = [SimpleNamespace(data=np.empty(n // np.dtype(d).itemsize, dtype=d)) for n, d in zip(nbytes, dtypes,
                                                                                                   strict=True)]
    return [len(b) for b in buckets(params, cap_bytes=cap)]


BUCKET_PROBES = [([48, 20, 32, 64, 24, 120], ["f4", "f4", "f4", "f4", "f8", "f8"], 64),
                 ([12, 12, 12, 12], ["f4"] * 4, 25), ([100, 4, 4], ["f4"] * 3, 64), ([16, 16, 16], ["f4"] * 3, 32),
                 ([8, 8, 8, 8], ["f4", "f8", "f8", "f4"], 1000)]


@exercise("16.3", "bucket_lengths",
          "gradient sizes `nbytes` and dtypes in parameter order, a bucket cap in bytes -> how many parameters "
          "each bucket of distributed.buckets holds (a list of ints)")
def check_bucket_lengths(fn):
    mistakes = [
        ("the dtype ignored: a bucket is one flat array, so float32 and float64 gradients cannot share one",
         lambda nbytes, dtypes, cap: _bucket_lengths_ref(nbytes, ["f4"] * len(nbytes), cap)),   # one dtype
        ("a bucket closed when it reaches the cap (>=): one that fills the cap exactly is still within it",
         lambda nbytes, dtypes, cap: _bucket_lengths_ref(nbytes, dtypes, cap - 1)),
        ("one bucket per parameter: that is one all-reduce call per parameter, what buckets exist to avoid",
         lambda nbytes, dtypes, cap: [1] * len(nbytes)),
    ]
    return check_forward("16.3", fn, _bucket_lengths_ref, BUCKET_PROBES, mistakes,
                         hint="walk the parameters in order; start a new bucket when the next would not fit.")
