"""The RoIPool engine: every bin's max and first argmax in a few chunked gathers, no loop over bins.

Shapes:  input (N, C, H, W), K RoIs, (ph, pw) bins -> out (K, C, ph, pw), argmax (K, C, ph, pw) int32
Idea:    the map becomes channel-last rows (N*H*W, C) plus one row of -inf; a chunk of bins of similar
         pixel count (fast/roi_align.py: `chunks_by_length`) is ONE gather of (bins, pixels, C) rows, the
         max over pixels, and the first position of that max found without a loop: with descending
         ranks L..1 on the pixels, L - max(rank where value == max) is the first match (int16 ranks
         while L < 2**15 keep that array small).
Equal:   to roi_pool.py's reference (tests/test_fast.py); the bins are the reference's `roi_pool_bins`.
Chapter: nbs/14_appendix_engines.ipynb (the reference: roi_pool.py, nbs/07_roipool_vs_roialign.ipynb)
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .roi_align import chunks_by_length


def forward(input, bins, output_size):
    """bins = (batch, hstart, hend, wstart, wend) of `roi_pool_bins` -> out, argmax (K, C, ph, pw)."""
    xp = get_array_module(input)
    ph, pw = output_size
    N, C, H, W = input.shape
    K = bins[0].shape[0]
    batch, hs, he, ws, we = bins
    bh = xp.maximum(he - hs, 0)[:, :, None]                            # (K, ph, 1)
    bw = xp.maximum(we - ws, 0)[:, None, :]                            # (K, 1, pw)
    area = (bh * bw).reshape(-1)                                       # (K*ph*pw,) pixels per bin
    # channel-last rows (N*H*W, C), plus one row of -inf that the padding of short bins reads
    x_cl = xp.empty((N * H * W + 1, C), dtype=input.dtype)
    x_cl[:-1] = input.transpose(0, 2, 3, 1).reshape(N * H * W, C)
    x_cl[-1] = -xp.inf
    out_cl = xp.zeros((K * ph * pw, C), dtype=input.dtype)              # empty bins stay 0
    arg_cl = xp.full((K * ph * pw, C), -1, dtype=np.int32)              # ... with argmax -1 (int32 as the kernel)
    for ids, L in chunks_by_length(area, C * input.dtype.itemsize):
        k, p, q = ids // (ph * pw), (ids // pw) % ph, ids % pw
        j = xp.arange(L)[None, :]
        wide = (we[k, q] - ws[k, q])[:, None]
        dy = j // wide                                                 # pixel j of the bin: rows
        dx = j - dy * wide                                             # first, then columns
        valid = j < area[ids][:, None]
        plane = (hs[k, p][:, None] + dy) * W + ws[k, q][:, None] + dx  # (B, L) index in the H*W plane
        rows = xp.where(valid, batch[k][:, None] * (H * W) + plane, N * H * W)
        g = xp.take(x_cl, rows.reshape(-1), axis=0).reshape(ids.size, L, C)
        # max over each bin's pixels, then its first position: j = L - max_j (best at j) * (L - j)
        best = g.max(axis=1)                                           # (B, C)
        first = xp.arange(L, 0, -1, dtype=np.int16 if L < 2**15 else np.int32)[None, :, None]
        pick = L - xp.where(g == best[:, None, :], first, 0).max(axis=1)
        pick = xp.minimum(pick, L - 1).astype(np.int64)                # (a NaN bin matches nowhere)
        out_cl[ids] = best
        arg_cl[ids] = xp.take_along_axis(plane, pick, axis=1)
    out = xp.ascontiguousarray(out_cl.reshape(K, ph, pw, C).transpose(0, 3, 1, 2))
    argmax = xp.ascontiguousarray(arg_cl.reshape(K, ph, pw, C).transpose(0, 3, 1, 2))
    return out, argmax
