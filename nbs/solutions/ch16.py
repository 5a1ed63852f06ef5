"""Chapter 16 solutions: a rank's share of the global batch, the global loss from the ranks' means, the gradient
buckets."""

import numpy as np


def rank_share(items, rank, size):
    n = len(items)
    return list(items[n * rank // size: n * (rank + 1) // size])   # contiguous; the later ranks take the extras


def global_mean(means, counts):
    means, counts = np.asarray(means, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    total = counts.sum()                                            # the global count
    return float((means * counts).sum() / total) if total > 0 else 0.0   # the ranks' sums, over it


def bucket_lengths(nbytes, dtypes, cap):
    lengths, size, last = [], 0, None
    for n, d in zip(nbytes, dtypes, strict=True):
        if not lengths or size + n > cap or d != last:              # would overflow, or another dtype: new bucket
            lengths.append(0)
            size = 0
        lengths[-1] += 1
        size += n
        last = d
    return lengths
