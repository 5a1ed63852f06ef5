"""Shared hypothesis strategies: boxes, scores, IoU matrices.

Boxes are drawn as (x1, y1, w, h) with w, h >= min_size and turned into x1 y1 x2 y2, so every drawn
box is valid by construction. `integer=True` puts corners on a whole-pixel grid, which makes equal
coordinates, equal IoUs and IoUs exactly at a threshold common: the edge cases NMS and matching
must get right.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays


@st.composite
def boxes(draw, min_n=0, max_n=16, max_coord=100, min_size=1, max_size=50, integer=False, dtype=np.float64):
    """(N, 4) boxes x1 y1 x2 y2 with x1 in [0, max_coord] and sizes in [min_size, max_size]."""
    n = draw(st.integers(min_n, max_n))
    if integer:
        xy = draw(arrays(np.int64, (n, 2), elements=st.integers(0, int(max_coord))))
        wh = draw(arrays(np.int64, (n, 2), elements=st.integers(int(min_size), int(max_size))))
    else:
        # floats of width 32 keep values representable in float32 (no 1e-300 corner cases)
        xy = draw(arrays(np.float64, (n, 2), elements=st.floats(0, max_coord, width=32)))
        wh = draw(arrays(np.float64, (n, 2), elements=st.floats(min_size, max_size, width=32)))
    xy = xy.astype(np.float64)
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


@st.composite
def boxes_and_scores(draw, min_n=0, max_n=40, ties=False, **kw):
    """(N, 4) boxes and (N,) float32 scores; `ties=True` draws scores from a few values only."""
    b = draw(boxes(min_n=min_n, max_n=max_n, **kw))
    n = b.shape[0]
    if ties:
        s = draw(arrays(np.int64, (n,), elements=st.integers(0, 3))).astype(np.float32)
    else:
        s = draw(arrays(np.float32, (n,), elements=st.floats(0, 1, width=32), unique=True))
    return b, s


def random_boxes(rng, n, image=800, min_size=10, max_size=200, dtype=np.float32):
    """n boxes with uniform random centres in an image x image square and sides in [min, max]."""
    c = rng.uniform(0, image, (n, 2))
    wh = rng.uniform(min_size, max_size, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(dtype)


def clustered_boxes(rng, n, clusters=10, image=800, spread=6.0, size=(40, 120), dtype=np.float32):
    """n boxes jittered around a few objects: what an RPN proposes before NMS."""
    centres = rng.uniform(size[1], image - size[1], (clusters, 2))
    k = rng.integers(0, clusters, n)
    c = centres[k] + rng.normal(0, spread, (n, 2))
    wh = rng.uniform(size[0], size[1], (clusters, 2))[k] * rng.uniform(0.9, 1.1, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(dtype)
