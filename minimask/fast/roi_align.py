"""The RoIAlign tap engine: the reference's bilinear sums, regrouped into gathers and small matmuls.

Shapes:  input (N, C, H, W), K RoIs, (ph, pw) bins, G samples per bin and axis
Idea:    bilinear weights are separable: a bin's value is sum over (y tap, x tap) of wy * wx * pixel, and
         all samples of a bin along one axis read few distinct rows. So each axis is reduced to its
         merged taps (pixel index, summed weight / grid) once (`axis_taps`), the map becomes channel-last
         rows (N*H*W, C), and a chunk of bins is ONE gather of the rows its taps touch and ONE batched
         matmul with their weights. The backward groups the same (bin, pixel, weight) triples by
         pixel, so each pixel gathers its own sum (no scatter of rows, which NumPy does slowly).
Dense:   with very few channels (the mask targets: one binary mask per RoI) a tap gathers one number and
         nothing amortises it; there each axis's taps become a dense (pooled, size) weight matrix and a
         RoI's output is two GEMMs, Ay @ x @ Ax^T (`forward_dense`, `backward_dense`).
Equal:   to roi_align.py's reference (tests/test_fast.py); the geometry (roi_align_geometry,
         sample_points, bilinear_taps) is the reference's, computed there and handed in.
Chapter: nbs/14_appendix_engines.ipynb (the reference: roi_align.py, nbs/07_roipool_vs_roialign.ipynb)
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module, scatter_add

# Bytes of gathered rows per chunk: small enough to stay in cache, big enough to amortise Python.
_CHUNK_BYTES = 2 << 20
DENSE_MAX_CHANNELS = 4       # the dense path for maps with at most this many channels ...
DENSE_MAX_BYTES = 64 << 20   # ... whose per-RoI copies (K, C, H, W) fit in this


def axis_taps(taps, active, grid, size):
    """Bilinear taps of every bin along one axis, repeated pixels merged.

    taps = bilinear_taps(coord, size) of the sample coordinates (K, pooled, G), active (K, pooled, G)
    (both from roi_align.py: `sample_points`), grid (K,) samples per bin.

    Returns idx (K, pooled, T) int, w (K, pooled, T), n (K, pooled) int: the first n[k, p] taps are
    distinct pixels with the summed weight of all samples on them, divided by grid (the average);
    the rest is padding (idx 0, w 0). A bin's 2-D weights are the outer product of its y and x taps.
    """
    low, high, w_low, w_high = taps
    xp = get_array_module(w_low)
    K, pooled = w_low.shape[:2]
    inv = (1 / xp.maximum(grid, 1).astype(w_low.dtype))[:, None, None]
    T = 2 * w_low.shape[2]
    idx = xp.concatenate([low, high], axis=-1).reshape(K * pooled, T)         # (K*P, 2G)
    w = xp.concatenate([w_low, w_high], axis=-1) * inv
    w = xp.where(xp.concatenate([active, active], axis=-1), w, 0).reshape(K * pooled, T)
    # merge repeats: sort each bin's taps by pixel (zero weights last), sum runs of equal pixels
    idx = xp.where(w != 0, idx, size)
    order = xp.argsort(idx, axis=1, kind="stable")
    idx = xp.take_along_axis(idx, order, axis=1)
    w = xp.take_along_axis(w, order, axis=1)
    first = xp.ones(idx.shape, dtype=bool)
    first[:, 1:] = idx[:, 1:] != idx[:, :-1]
    slot = (xp.cumsum(first, axis=1) - 1) + (xp.arange(K * pooled) * T)[:, None]   # compact position
    w_c = xp.zeros(K * pooled * T, dtype=w.dtype)
    scatter_add(w_c, slot.reshape(-1), w.reshape(-1))
    idx_c = xp.zeros(K * pooled * T, dtype=np.int64)
    real = first & (idx < size)
    idx_c[slot[real]] = idx[real]
    n = real.sum(axis=1).reshape(K, pooled)
    Tn = max(int(n.max()), 1) if n.size else 1                              # host sync: a shape
    return (idx_c.reshape(K, pooled, T)[:, :, :Tn], w_c.reshape(K, pooled, T)[:, :, :Tn], n)


def chunks_by_length(lengths, row_bytes, budget=_CHUNK_BYTES):
    """Split segments (bins, pixels) into chunks of similar length for a padded gather.

    Yields (ids, L): ids of segments with length > 0, sorted by length, and L their longest length,
    with len(ids) * L * row_bytes <= budget (or a single segment). A loop over cache-sized chunks
    of many bins each, not over RoIs: each chunk is one gather and one batched matmul (or max).
    """
    xp = get_array_module(lengths)
    order = xp.argsort(lengths, kind="stable")
    sorted_len = np.asarray(lengths[order].get() if xp is not np else lengths[order])  # host plan
    i = int(np.searchsorted(sorted_len, 0, side="right"))                              # skip empties
    rows = max(budget // max(row_bytes, 1), 1)
    n = sorted_len.size
    while i < n:
        cand = sorted_len[i:i + rows]
        cost = np.arange(1, cand.size + 1) * cand          # padded rows if the chunk ended here
        b = max(int(np.searchsorted(cost, rows, side="right")), 1)
        yield order[i:i + b], int(cand[b - 1])
        i += b


def _bin_taps(ids, L, batch, ytaps, xtaps, P, Q, H, W):
    """For bins `ids` (flat k*P*Q + p*Q + q): padded (B, L) pixel rows and weights of their taps."""
    xp = get_array_module(ids)
    yidx, yw, ny = ytaps
    xidx, xw, nx = xtaps
    k, p, q = ids // (P * Q), (ids // Q) % P, ids % Q
    j = xp.arange(L)[None, :]
    nxb = nx[k, q][:, None]
    ty = j // xp.maximum(nxb, 1)                          # tap j of the bin = (ty, tx), x fastest
    tx = j - ty * nxb
    valid = ty < ny[k, p][:, None]
    ty = xp.where(valid, ty, 0)
    kk, pp, qq = k[:, None], p[:, None], q[:, None]
    pix = (batch[kk] * H + yidx[kk, pp, ty]) * W + xidx[kk, qq, tx]
    w = xp.where(valid, yw[kk, pp, ty] * xw[kk, qq, tx], 0)
    return xp.where(valid, pix, 0), w, valid


def _tap_counts(ytaps, xtaps):
    """Number of (y, x) taps of every bin, flat (K*P*Q,)."""
    ny, nx = ytaps[2], xtaps[2]
    return (ny[:, :, None] * nx[:, None, :]).reshape(-1)


def _gather_weighted_sum(src, pix, w, buf=None):
    """sum_j w[b, j] * src[pix[b, j]] for every row b: one gather and one batched matmul."""
    xp = get_array_module(src)
    B, L = pix.shape
    C = src.shape[1]
    if buf is not None and buf.shape[0] >= B * L:
        g = xp.take(src, pix.reshape(-1), axis=0, out=buf[: B * L])
    else:
        g = xp.take(src, pix.reshape(-1), axis=0)
    return xp.matmul(w[:, None, :], g.reshape(B, L, C))[:, 0, :]


def forward(input, batch, ytaps, xtaps, output_size):
    """out (K, C, ph, pw) from the taps of `axis_taps` per axis; returns (out, state for `backward`)."""
    xp = get_array_module(input)
    ph, pw = output_size
    N, C, H, W = input.shape
    K = batch.shape[0]
    x_cl = xp.ascontiguousarray(input.transpose(0, 2, 3, 1)).reshape(N * H * W, C)   # (NHW, C)
    out_cl = xp.zeros((K * ph * pw, C), dtype=input.dtype)
    row_bytes = C * input.dtype.itemsize
    buf = xp.empty((max(_CHUNK_BYTES // max(row_bytes, 1), 1), C), dtype=input.dtype)
    for ids, L in chunks_by_length(_tap_counts(ytaps, xtaps), row_bytes):
        pix, w, _ = _bin_taps(ids, L, batch, ytaps, xtaps, ph, pw, H, W)
        out_cl[ids] = _gather_weighted_sum(x_cl, pix, w, buf)
    out = xp.ascontiguousarray(out_cl.reshape(K, ph, pw, C).transpose(0, 3, 1, 2))
    return out, (batch, ytaps, xtaps, input.shape, (ph, pw))


def backward(dout, state):
    """d input (N, C, H, W): every bin's gradient spread over its taps with the forward's weights.

    forward was: out[k, :, p, q] = sum over taps (ty, tx) of wy[ty] * wx[tx] * x[n_k, :, y[ty], x[tx]]
    so d x[n, :, h, w] = sum over all (bin, tap) reaching pixel (n, h, w) of wy * wx * dout[bin].
    Instead of scattering rows (np.add.at on rows is slow) the taps are sorted by pixel and each
    pixel gathers its own sum, one padded chunk at a time; every pixel is written once.
    """
    xp = get_array_module(dout)
    batch, ytaps, xtaps, shape, (ph, pw) = state
    N, C, H, W = shape
    K = dout.shape[0]
    grad_cl = xp.zeros((N * H * W, C), dtype=dout.dtype)
    counts = _tap_counts(ytaps, xtaps)
    total = int(counts.sum())
    if total:
        # all (bin, pixel, weight) triples, in one padded pass per chunk of bins
        bins = xp.nonzero(counts)[0]
        L = int(counts.max())
        pix_all, w_all, bin_all = [], [], []
        step = max((1 << 22) // L, 1)
        for s in range(0, bins.size, step):  # bounded temporary size, not a loop over RoIs
            ids = bins[s:s + step]
            pix, w, valid = _bin_taps(ids, L, batch, ytaps, xtaps, ph, pw, H, W)
            pix_all.append(pix[valid])
            w_all.append(w[valid])
            bin_all.append(xp.broadcast_to(ids[:, None], valid.shape)[valid])
        pix, w, src = xp.concatenate(pix_all), xp.concatenate(w_all), xp.concatenate(bin_all)
        order = xp.argsort(pix)                                    # group the taps by pixel
        pix, w, src = pix[order], w[order], src[order]
        starts = xp.flatnonzero(xp.concatenate([xp.ones(1, bool), pix[1:] != pix[:-1]]))
        per_pixel = xp.diff(xp.concatenate([starts, xp.asarray([pix.size])]))
        g_cl = xp.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(K * ph * pw, C)
        row_bytes = C * dout.dtype.itemsize
        buf = xp.empty((max(_CHUNK_BYTES // max(row_bytes, 1), 1), C), dtype=dout.dtype)
        for ids, Lp in chunks_by_length(per_pixel, row_bytes):
            j = xp.arange(Lp)[None, :]
            valid = j < per_pixel[ids][:, None]
            t = xp.where(valid, starts[ids][:, None] + j, 0)
            wt = xp.where(valid, w[t], 0)
            grad_cl[pix[starts[ids]]] = _gather_weighted_sum(g_cl, src[t], wt, buf)   # unique pixels
    grad = xp.ascontiguousarray(grad_cl.reshape(N, H, W, C).transpose(0, 3, 1, 2))
    return grad


# --- the dense path: few channels --------------------------------------------------------------------

def use_dense(input_shape, num_rois, itemsize):
    """True for few channels and small maps: two GEMMs per RoI beat a gather per tap.

    Measured (mask targets: 32 RoIs of 1 x 128 x 128, adaptive grids of up to 3 x 3): taps 39 ms,
    the reference 17 ms, dense 2 ms.
    """
    N, C, H, W = input_shape
    return C <= DENSE_MAX_CHANNELS and num_rois * C * H * W * itemsize <= DENSE_MAX_BYTES


def axis_matrix(taps, size):
    """(K, pooled, size) dense weights from `axis_taps`' (idx, w, n): row p of RoI k holds bin p's taps."""
    idx, w, _ = taps
    xp = get_array_module(w)
    K, pooled, T = idx.shape
    A = xp.zeros(K * pooled * size, dtype=w.dtype)
    row = (xp.arange(K * pooled) * size)[:, None]
    scatter_add(A, (row + idx.reshape(K * pooled, T)).reshape(-1), w.reshape(-1))   # padding adds 0
    return A.reshape(K, pooled, size)


def forward_dense(input, batch, ytaps, xtaps, output_size):
    """out (K, C, ph, pw) = Ay[k] @ x[batch[k], c] @ Ax[k]^T for every RoI k and channel c."""
    N, C, H, W = input.shape
    Ay, Ax = axis_matrix(ytaps, H), axis_matrix(xtaps, W)                # (K, ph, H), (K, pw, W)
    out = Ay[:, None] @ input[batch] @ Ax.transpose(0, 2, 1)[:, None]      # (K, C, ph, pw)
    return out, (batch, Ay, Ax, input.shape)


def backward_dense(dout, state):
    """d input (N, C, H, W): each RoI adds Ay[k]^T @ dout[k, c] @ Ax[k] to its image, channel by channel."""
    xp = get_array_module(dout)
    batch, Ay, Ax, shape = state
    per_roi = Ay.transpose(0, 2, 1)[:, None] @ dout @ Ax[:, None]           # (K, C, H, W)
    grad = xp.zeros(shape, dtype=dout.dtype)
    for n in range(shape[0]):   # a loop over the batch's images, not over RoIs
        grad[n] = per_roi[batch == n].sum(axis=0)
    return grad
