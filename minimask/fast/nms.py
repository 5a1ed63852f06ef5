"""The sweep NMS engine: the greedy rule resolved on a sparse graph of overlapping pairs.

Shapes:  b (N, 4) boxes already in rank order (best first), groups (N,) int or None
Returns: kept ranks, ascending; equal to nms.py's greedy loop (tests/test_fast.py)
Chapter: nbs/14_appendix_engines.ipynb (the reference: nms.py, nbs/06_nms.ipynb)

How it is fast in NumPy. The textbook loop compares each kept box with every box below it: up to
N^2 / 2 IoUs. But two boxes can only have IoU > t when their left edges are within (1 - t) box
widths of each other, and their top edges within (1 - t) heights (proof at `_sweep_layout`). So:
  1. rank the boxes by score (one stable sort);
  2. sort them by (row strip, x1): the candidates for overlapping a box are then a few contiguous
     windows of that order, found with `searchsorted`; their IoUs are computed in one vectorised
     pass and the pairs above the threshold form a sparse "suppresses" graph from higher to lower
     rank (the role the CUDA kernel's bitmask rows play);
  3. resolve the greedy rule on that graph: a box is kept when no kept box points at it.
Clusters of near-identical boxes (proposals before NMS) would make step 2 quadratic in the cluster
size, so `greedy` first lets the top-ranked boxes remove what they overlap (as the textbook loop
does), in rounds, while that removes many boxes per round.
"""

from __future__ import annotations

import numpy as np

_PAIR_CHUNK = 1 << 22  # candidate pairs handled per vectorised pass (bounds memory to ~100 MB)
_REACH = 3  # strips searched above and below a box (more, thinner strips: fewer wasted pairs)
_SEED = 128  # top boxes resolved per elimination round in `_greedy`
_SEED_GAIN = 0.05  # more rounds while a round removes at least this fraction of the rest
_RESOLVE_ROUNDS = 24  # vectorised rounds in `_greedy_resolve` before the sequential finish



def keep_ranks(b, t, groups):
    """Greedy NMS of boxes in rank order (b (N, 4), threshold t, groups (N,) or None) -> (N,) bool keep."""
    keep = np.zeros(b.shape[0], dtype=bool)
    if t < 0:  # IoU >= 0 > t for every pair: the first box of each group suppresses the rest
        keep[0 if groups is None else np.unique(groups, return_index=True)[1]] = True
        return keep
    keep[greedy(b, t, groups)] = True
    return keep


class _Sweep:
    """The boxes (in rank order) prepared for pair finding: columns, sort keys, x-windows."""

    def __init__(self, b, t, groups):
        self.t = t
        self.x1, self.y1, self.x2, self.y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
        self.area = (self.x2 - self.x1) * (self.y2 - self.y1)  # as box_area computes it
        self.h = self.y2 - self.y1
        self.key, self.win, self.span, self.eps = _sweep_layout(b, t, groups)
        self.t_pre = b.dtype.type(max(t - 1e-4, 0.0))  # y-prefilter threshold, with rounding slack
        self.margin = b.dtype.type(8 * np.spacing(np.abs(b).max()))

    def sorted(self, ranks):
        """The ranks reordered by sort key (strip, then x1)."""
        return ranks[np.argsort(self.key[ranks], kind="stable")]

    def pairs_above(self, q, c, same):
        """Yield (i, j) rank arrays with IoU > t, i from q and j from c (both key-sorted ranks).

        Only pairs with x1_j >= x1_i (up to rounding) are visited; `same` (q is c) also skips
        j at or before i in the same strip, so each unordered pair comes once.
        """
        for qi, cj in _window_pairs(self.key[q], self.win[q], self.key[c], self.span, self.eps, same):
            i, j = q[qi], c[cj]
            # cheap test first: IoU > t needs a y-overlap above t * the taller height
            oy = np.minimum(self.y2[i], self.y2[j]) - np.maximum(self.y1[i], self.y1[j])
            near = oy >= self.t_pre * np.maximum(self.h[i], self.h[j]) - self.margin
            i, j = i[near], j[near]
            hit = self.iou(i, j) > self.t
            yield i[hit], j[hit]

    def iou(self, i, j):
        """IoU of the pairs (i[k], j[k]) with exactly `box_iou`'s arithmetic (dtype and order)."""
        w = np.maximum(np.minimum(self.x2[i], self.x2[j]) - np.maximum(self.x1[i], self.x1[j]), 0)
        h = np.maximum(np.minimum(self.y2[i], self.y2[j]) - np.maximum(self.y1[i], self.y1[j]), 0)
        inter = w * h
        union = self.area[i] + self.area[j] - inter
        positive = union > 0
        return np.where(positive, inter / np.where(positive, union, 1), 0)


def _sweep_layout(b, t, groups):
    """Sort keys (N,) float64 = strip * span + x1, and how far right (win) each box's partners lie.

    Why this finds every pair with IoU > t >= 0: inter > t * union >= t * w_i h_i and inter <=
    ox * h_i (ox = the overlap in x), so ox > t * w_i; with x1_i <= x1_j, ox <= w_i - (x1_j - x1_i),
    hence x1_j - x1_i < (1 - t) w_i: the left box's width bounds the gap. Likewise |y1_i - y1_j| <
    (1 - t) * max height, which is _REACH strips. So box i meets only boxes at most _REACH strips
    away with x1 in [x1_i, x1_i + (1 - t) w_i]: `_REACH * 2 + 1` windows of the sorted keys.
    Groups (batched NMS) get strip numbers far apart, so their boxes are never in one window.
    """
    f = max(1.0 - t, 0.0) + 1e-4  # slack: float32 IoUs may exceed t by a rounding error
    x1 = b[:, 0].astype(np.float64)
    y1 = b[:, 1].astype(np.float64)
    h = np.maximum(b[:, 3] - b[:, 1], 0).astype(np.float64)
    win = f * np.maximum(b[:, 2] - b[:, 0], 0).astype(np.float64) + 1e-6 * (np.abs(x1) + 1.0)
    strip_h = (f * float(h.max()) + 1e-6 * (float(np.abs(y1).max()) + 1.0)) / _REACH
    strip = np.floor((y1 - y1.min()) / strip_h).astype(np.int64)  # (N,) row strip of each box
    if groups is not None:  # a gap of more than _REACH strips between groups
        strip = strip + groups.astype(np.int64) * (int(strip.max()) + 2 * _REACH + 1)
    span = float(x1.max() - x1.min() + win.max()) + 1.0  # strips laid end to end along one axis
    span = 2.0 ** np.ceil(np.log2(span))  # a power of two keeps strip * span exact
    key = strip * span + (x1 - x1.min())
    eps = 4 * np.spacing(float(np.abs(key).max()) + (_REACH + 1) * span)  # rounding of key + k span
    return key, win, span, eps


def _window_pairs(qkey, qwin, ckey, span, eps, same):
    """Yield chunks (qi, cj) of positions with ckey[cj] in [qkey[qi] + k span, ... + qwin[qi]].

    qkey, ckey sorted; k runs over -_REACH.._REACH (strips above and below). With `same`
    (qkey is ckey) the own strip starts after qi. Chunks hold about _PAIR_CHUNK pairs.
    """
    pos = np.arange(qkey.size)
    lo, hi = [], []
    for k in range(-_REACH, _REACH + 1):
        lo.append(pos + 1 if (same and k == 0) else np.searchsorted(ckey, qkey + k * span - eps, side="left"))
        hi.append(np.searchsorted(ckey, qkey + k * span + qwin + eps, side="right"))
    lo, hi = np.concatenate(lo), np.concatenate(hi)
    owner = np.tile(pos, 2 * _REACH + 1)
    some = hi > lo
    owner, lo, count = owner[some], lo[some], (hi - lo)[some]
    ends = np.cumsum(count)
    start = 0
    while start < owner.size:
        done = int(ends[start] - count[start])  # pairs before this chunk
        stop = max(int(np.searchsorted(ends, done + _PAIR_CHUNK, side="right")), start + 1)
        c = count[start:stop]
        first = np.cumsum(c) - c  # where each owner's run starts within the chunk
        qi = np.repeat(owner[start:stop], c)
        cj = np.arange(int(ends[stop - 1]) - done) + np.repeat(lo[start:stop] - first, c)
        yield qi, cj
        start = stop


def greedy(b, t, groups):
    """Greedy NMS of boxes already in rank order -> kept ranks, ascending.

    Rounds first: resolve the top `_SEED` undecided boxes among themselves (they are decided by
    each other alone), then drop every lower box that a box kept there overlaps (dropped whatever
    else happens). This is the textbook loop, a block at a time; it removes a cluster's duplicates
    in one round. When a round stops paying, one sweep resolves everything left.
    """
    sweep = _Sweep(b, t, groups)
    undecided = np.arange(b.shape[0])  # ranks, ascending
    kept = []
    while undecided.size > _SEED:
        head, rest = undecided[:_SEED], undecided[_SEED:]
        k0 = _resolve_among(sweep, head)
        kept.append(k0)
        hit = np.zeros(b.shape[0], dtype=bool)
        ks, rs = sweep.sorted(k0), sweep.sorted(rest)
        for _, j in sweep.pairs_above(ks, rs, same=False):  # kept box left of the other
            hit[j] = True
        for i, _ in sweep.pairs_above(rs, ks, same=False):  # kept box right of the other
            hit[i] = True
        undecided = rest[~hit[rest]]
        if rest.size - undecided.size < _SEED_GAIN * rest.size:
            break
    kept.append(_resolve_among(sweep, undecided))
    return np.concatenate(kept)


def _resolve_among(sweep, ranks):
    """Greedy NMS restricted to `ranks` (ascending) -> the kept ones, ascending."""
    if ranks.size == 0:
        return ranks
    s = sweep.sorted(ranks)
    src, dst = [], []
    for i, j in sweep.pairs_above(s, s, same=True):
        src.append(np.minimum(i, j))
        dst.append(np.maximum(i, j))
    src = np.concatenate(src) if src else ranks[:0]
    dst = np.concatenate(dst) if dst else ranks[:0]
    # renumber ranks to 0..len-1 so the resolve works on small arrays
    return ranks[_greedy_resolve(ranks.size, np.searchsorted(ranks, src), np.searchsorted(ranks, dst))]


def _greedy_resolve(n, src, dst):
    """Greedy NMS on a suppression graph (edges src -> dst, src ranked above) -> (n,) bool keep.

    A box is kept iff no kept box ranked above it points at it. Vectorised rounds decide every
    box whose higher-ranked neighbours are all decided (kept if none of them is kept, dropped
    otherwise). A long chain (each box overlapping only the next) needs a round per link, so after
    `_RESOLVE_ROUNDS` rounds a sequential pass over the remaining sources in rank order finishes
    the job: the sweep that ends the CUDA bitmask algorithm.
    """
    UNDECIDED, KEPT, DROPPED = 0, 1, 2
    state = np.full(n, KEPT, dtype=np.int8)  # boxes nobody points at are kept outright
    state[dst] = UNDECIDED
    for _ in range(_RESOLVE_ROUNDS):
        if src.size == 0:
            break
        s = state[src]
        killed = np.zeros(n, dtype=bool)
        killed[dst[s == KEPT]] = True  # a kept box above: dropped
        blocked = np.zeros(n, dtype=bool)
        blocked[dst[s == UNDECIDED]] = True  # a box above is still open: wait
        undecided = state == UNDECIDED
        state[undecided & killed] = DROPPED
        state[undecided & ~killed & ~blocked] = KEPT
        live = (state[dst] == UNDECIDED) & (state[src] != DROPPED)  # edges that can still matter
        src, dst = src[live], dst[live]
    if src.size:
        by_src = np.lexsort((dst, src))
        src, dst = src[by_src], dst[by_src]
        starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
        ends = np.r_[starts[1:], src.size]
        dropped = state == DROPPED
        for s, a, e in zip(src[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            if not dropped[s]:  # every box above s has been dealt with: s is kept
                dropped[dst[a:e]] = True
        state[dropped] = DROPPED
    return state != DROPPED
