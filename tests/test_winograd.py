"""Winograd F(2x2, 3x3): against nested loops, its gradients, its transforms' adjoints, threads, chunks."""

import contextlib

import numpy as np
import pytest
from gradcheck import adjoint_check, gradcheck
from hypothesis import given
from hypothesis import strategies as st
from test_conv import naive_conv2d

import minimask.fast.conv as conv_engine
import minimask.fast.conv_paths as conv_paths
import minimask.fast.winograd as wg
from minimask import fast
from minimask.conv import conv2d_backward, conv2d_forward
from minimask.fast import host


@contextlib.contextmanager
def forced_winograd():
    """The Winograd engine on, whatever the switch says (these tests are about the engine)."""
    old, was_on = conv_engine.FORCE_PATH, fast.enabled()
    conv_engine.FORCE_PATH = "winograd"
    fast.enable()
    try:
        yield
    finally:
        conv_engine.FORCE_PATH = old
        (fast.enable if was_on else fast.disable)()


@st.composite
def case3x3(draw, max_hw=9):
    """(x, w, padding): odd and even sizes (odd ones leave a half-empty last tile), 1x1 outputs, padding 0-2."""
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    H = draw(st.integers(max(1, 3 - 2 * p[0]), max_hw))
    W = draw(st.integers(max(1, 3 - 2 * p[1]), max_hw))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3)), p


@given(case3x3())
def test_winograd_conv_matches_nested_loops(case):
    x, w, p = case
    ref = naive_conv2d(x, w, None, (1, 1), p, (1, 1))
    # float64: the transforms only add, subtract and halve, so the error is rounding of the sums
    np.testing.assert_allclose(wg.winograd_conv(x, w, p), ref, rtol=1e-10, atol=1e-10)


@given(case3x3())
def test_winograd_gradients_equal_the_direct_ones(case):
    """dX (B dV B^T, overlap-added) and dW (G^T dM V^T G) against the shifted path's, which test_conv checks."""
    x, w, p = case
    out, cache = conv2d_forward(x, w, None, padding=p)
    g = np.random.default_rng(3).standard_normal(out.shape)
    with forced_winograd():
        out_w, cache_w = conv2d_forward(x, w, None, padding=p)
        dx_w, dw_w, _ = conv2d_backward(g, cache_w)
    old = conv_engine.FORCE_PATH
    conv_engine.FORCE_PATH = "shifted"
    try:
        dx, dw, _ = conv2d_backward(g, cache)
    finally:
        conv_engine.FORCE_PATH = old
    np.testing.assert_allclose(out_w, out, rtol=1e-10, atol=1e-10)
    dx_only, dw_none = wg.winograd_backward(g, w, p, x.shape)
    dx_none, dw_only = wg.winograd_backward(g, None, p, x.shape, x)
    assert dw_none is None and dx_none is None
    np.testing.assert_allclose(dx_only, dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw_only, dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx_w, dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw_w, dw, rtol=1e-10, atol=1e-10)


@given(case3x3(max_hw=6))
def test_winograd_gradcheck(case):
    x, w, p = case
    b = np.random.default_rng(4).standard_normal(w.shape[0])
    with forced_winograd():
        assert conv_engine.choose_path(x.shape, w.shape[0], (3, 3), (1, 1), p, (1, 1)) == "winograd"
        gradcheck(conv2d_forward, conv2d_backward, [x, w, b], wrt=[0, 1, 2], settings=dict(padding=p),
                  max_checks=40)


@given(case3x3())
def test_winograd_is_linear_with_its_adjoints(case):
    x, w, p = case
    with forced_winograd():
        adjoint_check(conv2d_forward, conv2d_backward, [x, w, None], wrt=0, settings=dict(padding=p))
        adjoint_check(conv2d_forward, conv2d_backward, [x, w, None], wrt=1, settings=dict(padding=p))


@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_transforms_are_adjoint_pairs(rng, hw):
    """<T(a), b> == <a, T^T(b)> for the weight, output and input transforms (junk tiles included)."""
    n, O, C = 2, 3, 5
    th, tw = wg.tiles(hw)
    for p in [(1, 1), (0, 2)]:
        x = rng.standard_normal((n, C, hw[0] + 2 - 2 * p[0], hw[1] + 2 - 2 * p[1]))
        V = wg.input_transform(x, p, (th, tw))
        dV = rng.standard_normal(V.shape).reshape(16, C, n, th, tw + 1)
        dV[..., tw] = 0  # the adjoint's contract: junk tiles carry no gradient (dM's are zero)
        dV = dV.reshape(V.shape)
        assert np.isclose(np.sum(V * dV), np.sum(x * wg.input_transform_adjoint(dV, x.shape, p)), rtol=1e-12)
    w, dU = rng.standard_normal((O, C, 3, 3)), rng.standard_normal((16, O, C))
    assert np.isclose(np.sum(wg.weight_transform(w) * dU), np.sum(w * wg.weight_transform_adjoint(dU)), rtol=1e-12)
    M, dy = rng.standard_normal((16, O, n * th * (tw + 1))), rng.standard_normal((n, O) + hw)
    out = wg.output_transform(M, np.empty((n, O) + hw))
    assert np.isclose(np.sum(out * dy), np.sum(M * wg.output_transform_adjoint(dy)), rtol=1e-12)


def test_transforms_are_the_papers_matrices(rng):
    """U[4a + b] = (G g G^T)[a, b], V = B^T d B on a tile's 4x4 patch, y = A^T m A: the constants as written."""
    G, B_T, A_T = np.array(wg.G), np.array(wg.B_T), np.array(wg.A_T)
    w = rng.standard_normal((2, 3, 3, 3))
    U = wg.weight_transform(w).reshape(4, 4, 2, 3)
    for o, c in [(0, 0), (1, 2)]:
        np.testing.assert_allclose(U[:, :, o, c], G @ w[o, c] @ G.T, rtol=1e-12, atol=1e-12)
    x = rng.standard_normal((1, 1, 6, 6))  # padding 1: tiles (3, 3), tile (1, 2) reads padded rows 2-5, cols 4-7
    V = wg.input_transform(x, (1, 1), (3, 3)).reshape(4, 4, 3, 4)
    patch = np.pad(x[0, 0], 1)[2:6, 4:8]
    np.testing.assert_allclose(V[:, :, 1, 2], B_T @ patch @ B_T.T, rtol=1e-12, atol=1e-12)
    M = rng.standard_normal((16, 1, 3 * 4))
    out = wg.output_transform(M, np.empty((1, 1, 6, 6)))
    np.testing.assert_allclose(out[0, 0, 2:4, 4:6], A_T @ M.reshape(4, 4, 3, 4)[:, :, 1, 2] @ A_T.T, rtol=1e-12)


def test_float32_error_is_rounding(rng):
    """float32 Winograd at a real layer's width (576 products per output) against a float64 reference:
    its error is float32 rounding, of the same order as the direct conv's (F(2x2, 3x3)'s transforms
    have coefficients 0, +-1/2, +-1, so they add little), far below the 1e-5 relative bound."""
    x = rng.standard_normal((2, 64, 16, 16))
    w = rng.standard_normal((64, 64, 3, 3)) / 24
    ref = conv_paths.shifted_conv(x, w, (1, 1), (1, 1))  # float64
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    out = wg.winograd_conv(x32, w32, (1, 1))
    assert out.dtype == np.float32
    err_winograd = np.max(np.abs(out - ref))
    err_direct = np.max(np.abs(conv_paths.shifted_conv(x32, w32, (1, 1), (1, 1)) - ref))
    assert err_winograd <= 1e-5 * np.max(np.abs(ref))
    assert err_winograd <= 4 * err_direct


@pytest.mark.parametrize("threads", ["1", "3"])
def test_threaded_transforms_equal_serial(monkeypatch, rng, threads):
    """split_map over channels (3 threads on 5 and 7 channels: uneven parts) gives the same bits."""
    x, w = rng.standard_normal((2, 5, 9, 8)), rng.standard_normal((7, 5, 3, 3))
    g = rng.standard_normal((2, 7, 9, 8))
    monkeypatch.setenv("MINIMASK_NUM_THREADS", "1")
    ref = (wg.winograd_conv(x, w, (1, 1)),) + wg.winograd_backward(g, w, (1, 1), x.shape, x)
    monkeypatch.setenv("MINIMASK_NUM_THREADS", threads)
    assert host.host_threads() == int(threads)
    got = (wg.winograd_conv(x, w, (1, 1)),) + wg.winograd_backward(g, w, (1, 1), x.shape, x)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_map_covers_the_range_once_and_raises():
    seen = []
    host.split_map(lambda i0, i1: seen.extend(range(i0, i1)), 11)
    assert sorted(seen) == list(range(11))

    def boom(i0, i1):
        raise ValueError(f"part {i0}:{i1}")

    with pytest.raises(ValueError, match="part"):
        host.split_map(boom, 4)


def test_kept_V_gives_the_recomputed_gradients(monkeypatch, rng):
    """The forward's V, kept in the cache, and V recomputed in backward give the same dW bits."""
    x, w = rng.standard_normal((2, 4, 7, 6)).astype(np.float32), rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    g = rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
    with forced_winograd():
        out, cache = conv2d_forward(x, w, None, padding=1)
        assert len(cache[-1]) == 1 and cache[-1][0].shape == (16, 4, 2 * 4 * (3 + 1))  # (16, C, n * th * (tw + 1))
        kept = conv2d_backward(g, cache)
        monkeypatch.setattr(conv_engine, "WINOGRAD_KEEP_V", False)
        out2, cache2 = conv2d_forward(x, w, None, padding=1)
        assert cache2[-1] == []
        recomputed = conv2d_backward(g, cache2)
    np.testing.assert_array_equal(out, out2)
    for a, b in zip(kept[:2], recomputed[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(conv_engine, "WINOGRAD_KEEP_V", True)
    with forced_winograd():
        _, cache = conv2d_forward(x, w, None, padding=1)  # one chunk kept...
        monkeypatch.setattr(conv_paths, "COL_BUDGET_BYTES", 1)  # ...backward in two: V is recomputed
        chunked = conv2d_backward(g, cache)
    for a, b in zip(chunked[:2], recomputed[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_winograd_equals_unchunked(monkeypatch, rng):
    x, w = rng.standard_normal((3, 4, 8, 7)), rng.standard_normal((5, 4, 3, 3))
    g = rng.standard_normal((3, 5, 8, 7))
    ref = (wg.winograd_conv(x, w, (1, 1)),) + wg.winograd_backward(g, w, (1, 1), x.shape, x)
    monkeypatch.setattr(conv_paths, "COL_BUDGET_BYTES", 1)  # one image per chunk
    got = (wg.winograd_conv(x, w, (1, 1)),) + wg.winograd_backward(g, w, (1, 1), x.shape, x)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_path_choice_sends_wide_3x3_convs_to_winograd():
    choose = lambda shape, O, k=3, s=1, p=1, d=1: conv_engine.choose_path(shape, O, (k, k), (s, s), (p, p), (d, d))
    assert choose((1, 256, 32, 32), 256) == "winograd"  # >= 128 channels: any map
    assert choose((100, 256, 14, 14), 256) == "winograd"
    assert choose((1, 64, 128, 128), 64) == "winograd"  # 64 channels on a big map
    assert choose((8, 64, 32, 32), 64) != "winograd"  # 64 channels on small maps: the transforms cost more
    assert choose((1, 3, 128, 128), 64) != "winograd"  # few input channels
    assert choose((1, 256, 32, 32), 256, s=2) == "im2col"  # strided, dilated, 5x5: not F(2x2, 3x3)
    assert choose((1, 256, 32, 32), 256, d=2) != "winograd"
    assert choose((1, 256, 32, 32), 256, k=5) != "winograd"


def test_keep_freed_host_memory_is_harmless():
    assert isinstance(host.keep_freed_host_memory(), bool)
    a = np.ones(10_000_000, np.float32)  # 40 MB: from the heap now, freed and reused
    del a
    assert np.ones(10_000_000, np.float32).sum() == 10_000_000
