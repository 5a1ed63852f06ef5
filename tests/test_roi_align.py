"""RoIAlign: the worked 5x5 example, a naive loop reference, properties, gradients, torchvision parity."""

import importlib
import math

import numpy as np
import pytest
from gradcheck import adjoint_check, gradcheck
from hypothesis import given
from hypothesis import strategies as st

from minimask.roi_align import bilinear_interpolate, roi_align, roi_align_backward, roi_align_forward
from minimask.tape import Tensor

ra = importlib.import_module("minimask.roi_align")   # the module (minimask.roi_align may be the function)
tap_engine = importlib.import_module("minimask.fast.roi_align")

# ------------------------------------------------------------------------------------------------
# a naive reference: the paper's algorithm as loops over RoIs, bins and samples (independent code)
# ------------------------------------------------------------------------------------------------


def naive_bilinear(plane, y, x):
    H, W = plane.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), H - 1), min(int(x), W - 1)
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    ly = y - y0 if y0 < H - 1 else 0.0
    lx = x - x0 if x0 < W - 1 else 0.0
    return ((1 - ly) * (1 - lx) * plane[y0, x0] + (1 - ly) * lx * plane[y0, x1]
            + ly * (1 - lx) * plane[y1, x0] + ly * lx * plane[y1, x1])


def naive_roi_align(x, rois, size, scale, sr, aligned):
    ph, pw = size
    out = np.zeros((len(rois), x.shape[1], ph, pw))
    off = 0.5 if aligned else 0.0
    for k, (n, x1, y1, x2, y2) in enumerate(rois):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = sr if sr > 0 else max(math.ceil(rh / ph), 0)
        gw = sr if sr > 0 else max(math.ceil(rw / pw), 0)
        for c in range(x.shape[1]):
            for p in range(ph):
                for q in range(pw):
                    acc = 0.0
                    for iy in range(gh):
                        for ix in range(gw):
                            yy = sy + p * rh / ph + (iy + 0.5) * rh / ph / gh
                            xx = sx + q * rw / pw + (ix + 0.5) * rw / pw / gw
                            acc += naive_bilinear(x[int(n), c], yy, xx)
                    out[k, c, p, q] = acc / max(gh * gw, 1)
    return out


def random_rois(rng, K, N, H, W, scale, margin=0.5, min_size=0.0, max_size=None):
    """K rois (batch, x1, y1, x2, y2) in image pixels; corners may leave the map by `margin`."""
    max_size = max_size or max(H, W) * 1.2
    w = rng.uniform(min_size, max(min(max_size, W * (1 + 2 * margin)), min_size), K)
    h = rng.uniform(min_size, max(min(max_size, H * (1 + 2 * margin)), min_size), K)
    x1 = rng.uniform(-margin * W, W * (1 + margin) - w)
    y1 = rng.uniform(-margin * H, H * (1 + margin) - h)
    b = np.stack([rng.integers(0, N, K), x1, y1, x1 + w, y1 + h], axis=1)
    b[:, 1:] /= scale
    return b


# ------------------------------------------------------------------------------------------------
# the worked example (STYLE example 9; also a cell of chapter 07)
# ------------------------------------------------------------------------------------------------

# A 5x5 map with value 5*y + x; one box from (1, 1) to (3, 3); 2x2 bins of 1x1 map pixel each,
# one sample per bin at the bin centre.
#   aligned=False: bin centres at y, x in {1.5, 2.5} -> 5*1.5 + 1.5 = 9, 10, 14, 15
#   aligned=True:  the box moves by -0.5 -> centres at {1.0, 2.0} -> 6, 7, 11, 12 (pixel values)
TINY = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
TINY_BOX = np.array([[0, 1, 1, 3, 3]], dtype=np.float32)


@pytest.mark.parametrize("sampling_ratio", [1, -1])   # adaptive: ceil(2 / 2) = 1 sample, the same
def test_worked_example(sampling_ratio):
    out = roi_align(TINY, TINY_BOX, 2, 1.0, sampling_ratio, aligned=False).data
    np.testing.assert_array_equal(out[0, 0], [[9, 10], [14, 15]])
    out = roi_align(TINY, TINY_BOX, 2, 1.0, sampling_ratio, aligned=True).data
    np.testing.assert_array_equal(out[0, 0], [[6, 7], [11, 12]])


def test_bilinear_interpolate_by_hand():
    plane = np.array([[[0.0, 1.0], [2.0, 4.0]]])
    # centre of the 4 pixels: their mean; on the right edge: clamped; beyond -1: zero
    np.testing.assert_allclose(bilinear_interpolate(plane, 0.5, 0.5), [1.75])
    np.testing.assert_allclose(bilinear_interpolate(plane, 0.0, 1.5), [1.0])
    np.testing.assert_allclose(bilinear_interpolate(plane, -0.5, 1.0), [1.0])
    np.testing.assert_allclose(bilinear_interpolate(plane, -1.5, 0.0), [0.0])
    np.testing.assert_allclose(bilinear_interpolate(plane, np.array([0.25]), np.array([1.0])), [[1.75]])


# ------------------------------------------------------------------------------------------------
# against the naive loops, over drawn shapes and settings
# ------------------------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    N=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9),
    K=st.integers(0, 5), ph=st.integers(1, 4), pw=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 0.25]), sr=st.sampled_from([-1, 0, 1, 2, 3]), aligned=st.booleans(),
)
def test_matches_naive_loops(seed, N, C, H, W, K, ph, pw, scale, sr, aligned):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    rois = random_rois(rng, K, N, H, W, scale)
    rois[: K // 3, 3:] = rois[: K // 3, 1:3]                        # some zero-size boxes
    out, _ = roi_align_forward(x, rois, (ph, pw), scale, sr, aligned)
    # float64 both sides; only the summation order differs
    np.testing.assert_allclose(out, naive_roi_align(x, rois, (ph, pw), scale, sr, aligned), atol=1e-12)


def test_many_chunks_equal_one(monkeypatch, rng):
    x = rng.standard_normal((2, 4, 16, 16))
    rois = random_rois(rng, 40, 2, 16, 16, 0.5)
    ref, cache = roi_align_forward(x, rois, 5, 0.5, 0, True)
    g = rng.standard_normal(ref.shape)
    gref, _ = roi_align_backward(g, cache)
    monkeypatch.setattr(tap_engine, "_CHUNK_BYTES", 64)           # a chunk per one or two bins
    out, cache = roi_align_forward(x, rois, 5, 0.5, 0, True)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(roi_align_backward(g, cache)[0], gref, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), sr=st.sampled_from([-1, 2]), aligned=st.booleans(),
       value=st.floats(-10, 10))
def test_constant_map_gives_constant_output(seed, sr, aligned, value):
    rng = np.random.default_rng(seed)
    x = np.full((1, 2, 9, 11), value, dtype=np.float32)
    rois = random_rois(rng, 6, 1, 9, 11, 1.0, margin=0.0, min_size=0.5, max_size=8)   # inside the map
    out = roi_align(x, rois, (3, 4), 1.0, sr, aligned).data
    # float32: weights sum to 1 up to a few ulp
    np.testing.assert_allclose(out, value, rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 2**31 - 1), sr=st.sampled_from([-1, 1, 2, 3]), aligned=st.booleans(),
       a=st.floats(-3, 3), b=st.floats(-3, 3), c=st.floats(-3, 3))
def test_linear_ramp_gives_bin_centre_value(seed, sr, aligned, a, b, c):
    """Bilinear interpolation is exact on a ramp, and the average of a ramp over the symmetric
    sample grid is the ramp at the bin centre: start + (p + 1/2) * bin."""
    rng = np.random.default_rng(seed)
    H, W = 12, 10
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    x = (a * yy + b * xx + c)[None, None].astype(np.float64)
    off = 0.5 if aligned else 0.0
    size = rng.uniform(0.2, 4.0, (5, 2))                                 # (w, h) in map pixels
    span = size if aligned else np.maximum(size, 1.0)                    # what the sampler covers
    start = rng.uniform(0, 1, (5, 2)) * (np.array([W - 1, H - 1]) - span)   # samples in [0, size-1]
    rois = np.concatenate([np.zeros((5, 1)), start + off, start + off + size], axis=1)
    ph, pw = 3, 2
    out = roi_align(x, rois, (ph, pw), 1.0, sr, aligned).data[:, 0]       # (K, ph, pw)
    sx, sy = rois[:, 1] - off, rois[:, 2] - off
    rw, rh = rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]
    if not aligned:
        rw, rh = np.maximum(rw, 1), np.maximum(rh, 1)
    cy = sy[:, None] + (np.arange(ph)[None] + 0.5) * rh[:, None] / ph
    cx = sx[:, None] + (np.arange(pw)[None] + 0.5) * rw[:, None] / pw
    expected = a * cy[:, :, None] + b * cx[:, None, :] + c
    np.testing.assert_allclose(out, expected, atol=1e-9)   # float64


@given(seed=st.integers(0, 2**31 - 1), sr=st.sampled_from([-1, 2]), scale=st.sampled_from([1.0, 0.5, 0.25]))
def test_aligned_equals_unaligned_with_half_pixel_shift(seed, sr, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 10, 9))
    rois = random_rois(rng, 6, 2, 10, 9, scale, min_size=1.0)     # >= 1 map pixel: no 1x1 clamp
    shifted = rois.copy()
    shifted[:, 1:] -= 0.5 / scale
    a = roi_align(x, rois, 3, scale, sr, aligned=True).data
    b = roi_align(x, shifted, 3, scale, sr, aligned=False).data
    # float64; coordinates differ by rounding only and the op is continuous away from the
    # [-1, size] cut, which random boxes do not hit
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_boxes_outside_zero_size_and_empty(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    far = np.array([[0, 20, 20, 30, 30], [0, -30, -30, -10, -10]], np.float32)
    assert np.all(roi_align(x, far, 2, 1.0, 2, True).data == 0)
    empty = roi_align(x, np.zeros((0, 5), np.float32), (3, 4), 1.0, -1, True).data
    assert empty.shape == (0, 2, 3, 4) and empty.dtype == np.float32
    g, _ = roi_align_backward(np.zeros((0, 2, 3, 4), np.float32), roi_align_forward(x, np.zeros((0, 5)), (3, 4))[1])
    assert g.shape == x.shape and not g.any()
    # a zero-size box: aligned=True and adaptive -> no samples -> 0; aligned=False -> a 1x1 box
    point = np.array([[0, 2, 3, 2, 3]], np.float32)
    assert np.all(roi_align(x, point, 2, 1.0, -1, True).data == 0)
    unaligned = roi_align(x, point, 1, 1.0, 1, False).data[0, :, 0, 0]
    np.testing.assert_allclose(unaligned, bilinear_interpolate(x[0], 3.5, 2.5), rtol=1e-6)
    # partly outside: the part inside the [-1, size] margin counts, the rest is zero
    part = np.array([[0, -4, 0, 2, 6]], np.float64)
    out = roi_align(x.astype(np.float64), part, (1, 3), 1.0, 2, False).data
    np.testing.assert_allclose(out, naive_roi_align(x.astype(np.float64), part, (1, 3), 1.0, 2, False))


def test_dtype_list_boxes_and_tape(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    b0, b1 = np.array([[1, 1, 6, 5]], np.float32), np.array([[0, 2, 7, 7], [3, 3, 4, 4]], np.float32)
    t = Tensor(x, requires_grad=True)
    out = roi_align(t, [b0, b1], (2, 3), 0.5, 2, True)
    assert out.dtype == np.float32 and out.shape == (3, 3, 2, 3)
    rois = np.concatenate([np.c_[np.zeros(1), b0], np.c_[np.ones(2), b1]]).astype(np.float32)
    np.testing.assert_array_equal(out.data, roi_align(x, rois, (2, 3), 0.5, 2, True).data)
    assert roi_align(x, rois.astype(np.float64), 2).dtype == np.float32      # boxes follow the map
    g = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(g)
    _, cache = roi_align_forward(x, rois, (2, 3), 0.5, 2, True)
    ref, _ = roi_align_backward(g, cache)
    assert t.grad.dtype == np.float32
    np.testing.assert_allclose(t.grad, ref, rtol=1e-6)


@pytest.mark.parametrize(
    "x, boxes, size, match",
    [
        (np.zeros((3, 4, 4)), np.zeros((1, 5)), 2, "N, C, H, W"),
        (np.zeros((1, 1, 4, 4)), np.zeros((1, 4)), 2, r"\(K, 5\)"),
        (np.zeros((1, 1, 4, 4)), np.array([[1.0, 0, 0, 1, 1]]), 2, "batch indices"),
        (np.zeros((1, 1, 4, 4)), np.array([[0.0, 0, np.nan, 1, 1]]), 2, "non-finite"),
        (np.zeros((1, 1, 4, 4)), np.zeros((1, 5)), 0, "positive"),
        (np.zeros((1, 1, 4, 4), int), np.zeros((1, 5)), 2, "floating"),
    ],
)
def test_bad_input_raises(x, boxes, size, match):
    with pytest.raises(ValueError, match=match):
        roi_align(x, boxes, size)


# ------------------------------------------------------------------------------------------------
# gradients (float64). RoIAlign is linear in the map, so there are no kinks in the direction
# checked: the bilinear kinks are in the box coordinates, which get no gradient.
# ------------------------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1), N=st.integers(1, 2), C=st.integers(1, 3),
    H=st.integers(1, 8), W=st.integers(1, 8), K=st.integers(1, 4), ph=st.integers(1, 3),
    pw=st.integers(1, 3), sr=st.sampled_from([-1, 1, 2]), aligned=st.booleans(),
)
def test_gradcheck(seed, N, C, H, W, K, ph, pw, sr, aligned):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    rois = random_rois(rng, K, N, H, W, 0.5)
    gradcheck(roi_align_forward, roi_align_backward, [x, rois], wrt=[0],
              settings=dict(output_size=(ph, pw), spatial_scale=0.5, sampling_ratio=sr, aligned=aligned),
              max_checks=60)


@given(
    seed=st.integers(0, 2**31 - 1), N=st.integers(1, 3), C=st.integers(1, 8),
    H=st.integers(1, 20), W=st.integers(1, 20), K=st.integers(0, 30), ph=st.integers(1, 8),
    pw=st.integers(1, 8), sr=st.sampled_from([-1, 0, 1, 2, 4]), aligned=st.booleans(),
    scale=st.sampled_from([1.0, 0.5, 0.25, 0.125]),
)
def test_adjoint(seed, N, C, H, W, K, ph, pw, sr, aligned, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    rois = random_rois(rng, K, N, H, W, scale)
    adjoint_check(roi_align_forward, roi_align_backward, [x, rois], wrt=0,
                  settings=dict(output_size=(ph, pw), spatial_scale=scale, sampling_ratio=sr, aligned=aligned))


# ------------------------------------------------------------------------------------------------
# torchvision parity (oracle extra)
# ------------------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchvision_parity(torch, aligned, sampling_ratio, dtype):
    import torchvision

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 17, 13)).astype(dtype)
    rois = random_rois(rng, 30, 2, 17, 13, 0.25).astype(dtype)
    rois[:4, 3:] = rois[:4, 1:3]                                       # zero-size boxes
    rois[4, 1:] = [-200, -200, -150, -120]                             # wholly outside
    xt = torch.tensor(x, requires_grad=True)
    ref = torchvision.ops.roi_align(xt, torch.tensor(rois), (4, 3), 0.25, sampling_ratio, aligned)
    out, cache = roi_align_forward(x, rois, (4, 3), 0.25, sampling_ratio, aligned)
    g = rng.standard_normal(out.shape).astype(dtype)
    ref.backward(torch.tensor(g))
    gx, _ = roi_align_backward(g, cache)
    # float32: same sample coordinates, different summation order -> ~1e-6 relative
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=tol, atol=tol)
