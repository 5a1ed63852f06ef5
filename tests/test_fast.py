"""Every engine in minimask/fast equals the reference in its stage file, on random shapes.

The reference runs under `fast.reference()` (the switch MINIMASK_REFERENCE=1 sets for a whole run);
each engine is forced on for its side of the comparison. float64 inputs: the two differ only in
summation order, so they agree to ~1e-12 relative (float32 would leave ~1e-6 of rounding noise).
"""

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import boxes_and_scores
from test_roi_align import random_rois

from minimask import fast
from minimask.conv import conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from minimask.fast import conv as conv_engine
from minimask.fast import roi_align as tap_engine
from minimask.nms import batched_nms, nms
from minimask.roi_align import roi_align_backward, roi_align_forward
from minimask.roi_pool import roi_pool_backward, roi_pool_forward


@contextlib.contextmanager
def engines_on(force_path=None):
    old_state, old_force = fast.enabled(), conv_engine.FORCE_PATH
    fast.enable()
    conv_engine.FORCE_PATH = force_path
    try:
        yield
    finally:
        conv_engine.FORCE_PATH = old_force
        (fast.enable if old_state else fast.disable)()


def both(fn, force_path=None):
    """(engine result, reference result) of fn()."""
    with engines_on(force_path):
        got = fn()
    with fast.reference():
        ref = fn()
    return got, ref


def assert_all_close(got, ref, tol=1e-10):
    for g, r in zip(got, ref, strict=True):
        if r is None:
            assert g is None
            continue
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * max(1.0, float(np.abs(r).max(initial=0))))


def test_switch_turns_the_engines_off_and_back_on():
    x = np.ones((1, 128, 8, 8))
    w = np.ones((128, 128, 3, 3))
    with engines_on():
        assert fast.pick_conv(x.shape, w.shape, (1, 1), (1, 1), (1, 1)).forward == "winograd"
        assert fast.pick_roi_align() and fast.pick_roi_pool() and fast.pick_nms()
        with fast.reference():
            assert fast.pick_conv(x.shape, w.shape, (1, 1), (1, 1), (1, 1)) is None
            assert not (fast.pick_roi_align() or fast.pick_roi_pool() or fast.pick_nms())
        assert fast.enabled()


def test_conv_backward_follows_the_forward_choice_not_the_switch(rng):
    """The plan is read once: turning engines off between forward and backward changes nothing."""
    x, w = rng.standard_normal((2, 128, 6, 6)), rng.standard_normal((128, 128, 3, 3)) * 0.05
    g = rng.standard_normal((2, 128, 6, 6))
    with engines_on():
        out, cache = conv2d_forward(x, w, None, 1, 1)
        assert cache[6].forward == "winograd"
        want = conv2d_backward(g, cache)
        with fast.reference():
            got = conv2d_backward(g, cache)
    assert_all_close(got, want, tol=0)


@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 3), C=st.integers(1, 5), O=st.integers(1, 5),
       H=st.integers(1, 9), W=st.integers(1, 9), k=st.sampled_from([1, 2, 3, 5]), s=st.integers(1, 2),
       p=st.integers(0, 2), d=st.integers(1, 2),
       path=st.sampled_from([None, "winograd", "shifted", "im2col"]))
def test_conv2d_engines_equal_the_reference(seed, N, C, O, H, W, k, s, p, d, path):
    if H + 2 * p < d * (k - 1) + 1 or W + 2 * p < d * (k - 1) + 1:
        return  # no output pixel
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, k, k)), rng.standard_normal(O)

    def run():
        out, cache = conv2d_forward(x, w, b, s, p, d)
        return (out,) + conv2d_backward(np.cos(out), cache)

    assert_all_close(*both(run, path))


@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 2), C=st.integers(1, 4), O=st.integers(1, 4),
       H=st.integers(1, 6), k=st.sampled_from([1, 2, 3]), s=st.integers(1, 2), p=st.integers(0, 1),
       op=st.integers(0, 1), path=st.sampled_from([None, "winograd", "shifted", "im2col"]))
def test_conv_transpose2d_engines_equal_the_reference(seed, N, C, O, H, k, s, p, op, path):
    if op >= s or (H - 1) * s - 2 * p + k + op < 1:
        return
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((N, C, H, H + 1)), rng.standard_normal((C, O, k, k))

    def run():
        out, cache = conv_transpose2d_forward(x, w, None, s, p, op)
        return (out,) + conv_transpose2d_backward(np.sin(out), cache)

    assert_all_close(*both(run, path))


@given(seed=st.integers(0, 2**31 - 1), K=st.integers(0, 12), C=st.integers(1, 4), H=st.integers(1, 12),
       W=st.integers(1, 12), size=st.integers(1, 4), scale=st.sampled_from([1.0, 0.5, 0.25]),
       sr=st.sampled_from([-1, 0, 1, 2]), aligned=st.booleans(), dense=st.booleans())
def test_roi_align_tap_engine_equals_the_reference(seed, K, C, H, W, size, scale, sr, aligned, dense):
    """Both paths of the engine: taps (gathers) and dense (two GEMMs per RoI, used for few channels)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, H, W))
    rois = random_rois(rng, K, 2, H, W, scale)
    rois[: K // 4, 3:] = rois[: K // 4, 1:3]  # some zero-size boxes

    def run():
        out, cache = roi_align_forward(x, rois, size, scale, sr, aligned)
        if fast.enabled():
            assert cache[0] == ("dense" if dense else "fast")
        return out, roi_align_backward(np.cos(out), cache)[0]

    saved = tap_engine.DENSE_MAX_CHANNELS
    tap_engine.DENSE_MAX_CHANNELS = 4 if dense else 0
    try:
        assert_all_close(*both(run))
    finally:
        tap_engine.DENSE_MAX_CHANNELS = saved


@given(seed=st.integers(0, 2**31 - 1), K=st.integers(0, 10), C=st.integers(1, 4), H=st.integers(1, 10),
       W=st.integers(1, 10), size=st.integers(1, 4), scale=st.sampled_from([1.0, 0.5]),
       ties=st.booleans())
def test_roi_pool_engine_equals_the_reference(seed, K, C, H, W, size, scale, ties):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (2, C, H, W)).astype(np.float64) if ties else rng.standard_normal((2, C, H, W))
    rois = random_rois(rng, K, 2, H, W, scale)

    def run():
        out, cache = roi_pool_forward(x, rois, size, scale)
        return out, cache[0], roi_pool_backward(np.cos(out), cache)[0]

    (out, arg, grad), (rout, rarg, rgrad) = both(run)
    np.testing.assert_array_equal(arg, rarg)  # the first maximum, exactly
    assert_all_close((out, grad), (rout, rgrad), tol=0)


@given(data=boxes_and_scores(max_n=60, ties=True, max_coord=60, max_size=40),
       t=st.sampled_from([-0.1, 0.0, 0.3, 0.5, 0.7, 1.0]), classes=st.integers(1, 3), seed=st.integers(0, 99))
def test_nms_sweep_equals_the_greedy_loop(data, t, classes, seed):
    b, s = data
    b = b.astype(np.float32)
    idxs = np.random.default_rng(seed).integers(0, classes, b.shape[0])
    got, ref = both(lambda: (nms(b, s, t), batched_nms(b, s, idxs, t)))
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("n", [500, 3000])
def test_nms_sweep_equals_the_greedy_loop_on_proposal_clusters(n):
    """Many near-identical boxes (proposals before NMS): the case where the sweep runs its rounds."""
    rng = np.random.default_rng(n)
    centres = rng.uniform(0, 800, (20, 2))[rng.integers(0, 20, n)]
    wh = rng.uniform(20, 200, (n, 2))
    b = np.concatenate([centres - wh / 2, centres + wh / 2], axis=1).astype(np.float32)
    s = rng.random(n).astype(np.float32)
    got, ref = both(lambda: nms(b, s, 0.7))
    np.testing.assert_array_equal(got, ref)
