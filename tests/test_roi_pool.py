"""RoIPool: the worked 5x5 example, a naive loop reference, argmax gradients, torchvision parity."""

import math

import numpy as np
import pytest
from gradcheck import gradcheck
from hypothesis import given
from hypothesis import strategies as st
from test_roi_align import random_rois

from minimask.roi_pool import roi_pool, roi_pool_backward, roi_pool_forward
from minimask.tape import Tensor


def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def naive_roi_pool(x, rois, size, scale):
    """Fast R-CNN's RoIPool as loops (independent of the package)."""
    ph, pw = size
    N, C, H, W = x.shape
    out = np.zeros((len(rois), C, ph, pw))
    arg = np.full((len(rois), C, ph, pw), -1)
    for k, (n, x1, y1, x2, y2) in enumerate(rois):
        sx, sy, ex, ey = (c_round(v * scale) for v in (x1, y1, x2, y2))
        rw, rh = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
        for p in range(ph):
            h0 = min(max(math.floor(p * rh / ph) + sy, 0), H)
            h1 = min(max(math.ceil((p + 1) * rh / ph) + sy, 0), H)
            for q in range(pw):
                w0 = min(max(math.floor(q * rw / pw) + sx, 0), W)
                w1 = min(max(math.ceil((q + 1) * rw / pw) + sx, 0), W)
                for c in range(C):
                    best, where = -np.inf, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if x[int(n), c, h, w] > best:
                                best, where = x[int(n), c, h, w], h * W + w
                    out[k, c, p, q] = best if where >= 0 else 0.0
                    arg[k, c, p, q] = where
    return out, arg


def test_worked_example():
    """5x5 map of 5*y + x, box (1, 1)-(3, 3): rounded to pixels 1..3 (3 pixels), bins of 1.5 pixels
    -> bin rows [floor(0), ceil(1.5)) = {1, 2} and [floor(1.5), ceil(3)) = {2, 3} (they overlap);
    the max of a bin is its bottom-right pixel: 5*2 + 2 = 12, 13, 17, 18."""
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    out, (argmax, _, _) = roi_pool_forward(x, np.array([[0, 1, 1, 3, 3]], np.float32), 2)
    np.testing.assert_array_equal(out[0, 0], [[12, 13], [17, 18]])
    np.testing.assert_array_equal(argmax[0, 0], [[12, 13], [17, 18]])    # flat h*W + w = value here


@given(
    seed=st.integers(0, 2**31 - 1), N=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 9),
    W=st.integers(1, 9), K=st.integers(0, 5), ph=st.integers(1, 4), pw=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 0.25]), ties=st.booleans(),
)
def test_matches_naive_loops(seed, N, C, H, W, K, ph, pw, scale, ties):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    if ties:
        x = np.round(x)                                   # many equal values: first one wins
    rois = random_rois(rng, K, N, H, W, scale)
    out, (argmax, _, _) = roi_pool_forward(x, rois, (ph, pw), scale)
    ref, ref_arg = naive_roi_pool(x, rois, (ph, pw), scale)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(argmax, ref_arg)


@given(seed=st.integers(0, 2**31 - 1), value=st.floats(-5, 5))
def test_constant_map_gives_constant_output(seed, value):
    rng = np.random.default_rng(seed)
    x = np.full((1, 2, 7, 9), value, np.float32)
    rois = random_rois(rng, 5, 1, 6, 8, 1.0, margin=0.0, min_size=0.0, max_size=5)   # rounds inside the map
    out = roi_pool(x, rois, (3, 2)).data
    assert np.all(out == np.float32(value))


def test_outside_zero_size_and_empty(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    out, (argmax, _, _) = roi_pool_forward(x, np.array([[0, 20, 20, 30, 30]], np.float32), 2)
    assert np.all(out == 0) and np.all(argmax == -1)          # empty bins: 0, no gradient
    point, _ = roi_pool_forward(x, np.array([[0, 2, 3, 2, 3]], np.float32), 1)
    np.testing.assert_array_equal(point[0, :, 0, 0], x[0, :, 3, 2])   # a 1x1 box: that pixel
    empty, cache = roi_pool_forward(x, np.zeros((0, 5), np.float32), (3, 4))
    assert empty.shape == (0, 2, 3, 4)
    g, _ = roi_pool_backward(np.zeros((0, 2, 3, 4), np.float32), cache)
    assert g.shape == x.shape and not g.any()


@given(
    seed=st.integers(0, 2**31 - 1), N=st.integers(1, 2), C=st.integers(1, 3),
    H=st.integers(1, 8), W=st.integers(1, 8), K=st.integers(1, 4), ph=st.integers(1, 3), pw=st.integers(1, 3),
)
def test_gradcheck_given_argmax(seed, N, C, H, W, K, ph, pw):
    """Distinct values at least 1e-2 apart: a 1e-6 step never changes which pixel wins a bin, so
    the max is differentiable there and the numeric gradient is exact (float64)."""
    rng = np.random.default_rng(seed)
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W) * 1e-2
    rois = random_rois(rng, K, N, H, W, 1.0)
    gradcheck(roi_pool_forward, roi_pool_backward, [x, rois], wrt=[0],
              settings=dict(output_size=(ph, pw), spatial_scale=1.0), max_checks=60)


def test_backward_sums_repeats_and_tape(rng):
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    x[0, 0, 1, 1] = 10.0                                     # every bin of both boxes picks it
    boxes = np.array([[0, 0, 0, 2, 2], [0, 1, 1, 1, 1]], np.float32)
    t = Tensor(x, requires_grad=True)
    out = roi_pool(t, boxes, 1)
    out.backward(np.ones(out.shape, np.float32))
    assert t.grad[0, 0, 1, 1] == 2.0 and t.grad.sum() == 2.0 and t.grad.dtype == np.float32


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchvision_parity(torch, dtype):
    import torchvision

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 15, 12)).astype(dtype)
    rois = random_rois(rng, 30, 2, 15, 12, 0.25).astype(dtype)
    rois[:3, 3:] = rois[:3, 1:3]
    xt = torch.tensor(x, requires_grad=True)
    ref = torchvision.ops.roi_pool(xt, torch.tensor(rois), (3, 4), 0.25)
    out, cache = roi_pool_forward(x, rois, (3, 4), 0.25)
    g = rng.standard_normal(out.shape).astype(dtype)
    ref.backward(torch.tensor(g))
    np.testing.assert_array_equal(out, ref.detach().numpy())          # a max: exact
    # gradients: sums of the same dout values, maybe in another order
    np.testing.assert_allclose(roi_pool_backward(g, cache)[0], xt.grad.numpy(), rtol=1e-6, atol=1e-6)
