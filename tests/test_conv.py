"""conv2d / conv_transpose2d: nested-loop references, gradients, adjoints, chunking, modules, torch parity."""

import contextlib

import numpy as np
import pytest
from gradcheck import adjoint_check, gradcheck
from hypothesis import assume, given
from hypothesis import strategies as st

import minimask.fast.conv as conv_engine
import minimask.fast.conv_paths as conv_paths
from minimask.conv import (
    Conv2d,
    ConvTranspose2d,
    col2im,
    conv2d,
    conv2d_backward,
    conv2d_forward,
    conv_output_size,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
    conv_transpose2d_output_size,
    im2col,
)
from minimask.tape import Tensor


# --- nested-loop references (float64, written independently of the im2col code) ---------------------
def naive_conv2d(x, w, b, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for y in range(Ho):
                for x_ in range(Wo):
                    s = 0.0 if b is None else b[o]
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                r, q = y * sh - ph + i * dh, x_ * sw - pw + j * dw
                                if 0 <= r < H and 0 <= q < W:
                                    s += x[n, c, r, q] * w[o, c, i, j]
                    out[n, o, y, x_] = s
    return out


def naive_conv_transpose2d(x, w, b, stride, padding, output_padding, dilation):
    """Each input pixel scatters weight-scaled copies of the kernel into the output."""
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = stride, padding, output_padding, dilation
    N, Ci, H, W = x.shape
    _, Co, kh, kw = w.shape
    Ho = (H - 1) * sh - 2 * ph + dh * (kh - 1) + oh + 1
    Wo = (W - 1) * sw - 2 * pw + dw * (kw - 1) + ow + 1
    out = np.zeros((N, Co, Ho, Wo))
    for n in range(N):
        for ci in range(Ci):
            for h in range(H):
                for q in range(W):
                    for i in range(kh):
                        for j in range(kw):
                            r, c = h * sh - ph + i * dh, q * sw - pw + j * dw
                            if 0 <= r < Ho and 0 <= c < Wo:
                                out[n, :, r, c] += x[n, ci, h, q] * w[ci, :, i, j]
    if b is not None:
        out += b[:, None, None]
    return out


@contextlib.contextmanager
def forced_path(path):
    """Run conv2d / conv_transpose2d on one path: None (the automatic choice) or one of PATHS."""
    old = conv_engine.FORCE_PATH
    conv_engine.FORCE_PATH = path
    try:
        yield
    finally:
        conv_engine.FORCE_PATH = old


PATHS = (None, "winograd", "shifted", "im2col")  # a forced path applies where it can (winograd: 3x3 stride 1)


# --- strategies -------------------------------------------------------------------------------------
kernels = st.sampled_from([1, 2, 3, 5, 7])


@st.composite
def conv_case(draw, max_hw=9):
    """(x, w, b, settings) with a valid (>= 1x1) output; kernels incl. 1x1 and 7x7, non-square inputs."""
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(kernels), draw(kernels)
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    assume(conv_output_size(H, kh, s[0], p[0], d[0]) >= 1 and conv_output_size(W, kw, s[1], p[1], d[1]) >= 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, kh, kw))
    b = rng.standard_normal(O) if draw(st.booleans()) else None
    return x, w, b, dict(stride=s, padding=p, dilation=d)


@st.composite
def transpose_case(draw, max_hw=6):
    N, Ci, Co = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(kernels), draw(kernels)
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    op = (draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1)))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    assume(conv_transpose2d_output_size(H, kh, s[0], p[0], op[0], d[0]) >= 1)
    assume(conv_transpose2d_output_size(W, kw, s[1], p[1], op[1], d[1]) >= 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((N, Ci, H, W))
    w = rng.standard_normal((Ci, Co, kh, kw))
    b = rng.standard_normal(Co) if draw(st.booleans()) else None
    return x, w, b, dict(stride=s, padding=p, output_padding=op, dilation=d)


# --- forward against the references --------------------------------------------------------------------
@given(conv_case())
def test_conv2d_matches_nested_loops(case):
    x, w, b, kw = case
    ref = naive_conv2d(x, w, b, **kw)
    for path in PATHS:
        with forced_path(path):
            out, _ = conv2d_forward(x, w, b, **kw)
        # float64 both sides: only summation-order rounding differs
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


@given(transpose_case())
def test_conv_transpose2d_matches_nested_loops(case):
    x, w, b, kw = case
    ref = naive_conv_transpose2d(x, w, b, **kw)
    for path in PATHS:
        with forced_path(path):
            out, _ = conv_transpose2d_forward(x, w, b, **kw)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


def test_automatic_path_choice():
    """The cost model sends the shapes of the benchmark where they measured fastest."""
    choose = lambda shape, O, k, s=1, p=1: conv_engine.choose_path(shape, O, (k, k), (s, s), (p, p), (1, 1))
    assert choose((1, 256, 128, 128), 256, 3) == "winograd"  # wide 3x3: test_winograd.py has the rest
    assert choose((1, 256, 128, 128), 256, 5) == "shifted"  # big map: ~3% of the grid wasted
    assert choose((8, 64, 32, 32), 64, 3) == "shifted"  # 6% wasted, im2col's copy ~ 16/64 of the matmul
    assert choose((100, 256, 14, 14), 256, 5) == "im2col"  # 24% wasted > the copy's 16/256
    assert choose((8, 96, 8, 8), 96, 3) == "im2col"  # 21% wasted: 0.27 extra > the copy's 16/96
    assert choose((8, 64, 32, 32), 64, 3, s=2) == "im2col"  # strided: the only choice
    assert choose((8, 256, 32, 32), 64, 1, p=0) == "1x1"
    assert choose((8, 256, 32, 32), 64, 1, s=2, p=0) == "1x1"


@pytest.mark.parametrize("path", PATHS)
def test_batched_small_maps_match_nested_loops(rng, path):
    """Many small maps (the mask head's RoIs), 14x14 at sizes the tests can afford, on every path."""
    x = rng.standard_normal((5, 3, 6, 5))
    for k, s, p, d in [(1, 1, 0, 1), (1, 2, 1, 1), (3, 1, 1, 1), (3, 1, 2, 2), (3, 2, 1, 1), (5, 1, 0, 1)]:
        w = rng.standard_normal((4, 3, k, k))
        b = rng.standard_normal(4)
        kw = dict(stride=(s, s), padding=(p, p), dilation=(d, d))
        with forced_path(path):
            out, cache = conv2d_forward(x, w, b, **kw)
            g = rng.standard_normal(out.shape)
            dx, dw, db = conv2d_backward(g, cache)
        np.testing.assert_allclose(out, naive_conv2d(x, w, b, **kw), rtol=1e-10, atol=1e-10)
        # the gradients against the linear maps they are, built from the nested-loop conv: <conv(x), g>
        # is linear in x and in w, so d/dx and d/dw equal the naive conv's values on unit inputs
        basis_w = np.eye(w.size).reshape((w.size,) + w.shape)
        ref_dw = np.array([np.sum(naive_conv2d(x, e, None, **kw) * g) for e in basis_w]).reshape(w.shape)
        np.testing.assert_allclose(dw, ref_dw, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)
        assert dx.shape == x.shape
    wt = rng.standard_normal((3, 4, 2, 2))
    kw = dict(stride=(2, 2), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1))
    with forced_path(path):  # the 2x2/2 deconvolution: non-overlapping patches
        out_t = conv_transpose2d_forward(x, wt, None, **kw)[0]
    np.testing.assert_allclose(out_t, naive_conv_transpose2d(x, wt, None, **kw), rtol=1e-10, atol=1e-10)


def test_im2col_layout_and_col2im_counts():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    cols = im2col(x, 3, stride=1, padding=1)
    assert cols.shape == (2, 3 * 9, 4 * 5)
    # column of output pixel (1, 2): the 3x3 patch centred there, channel-major like weight.reshape(O, -1)
    np.testing.assert_array_equal(cols[1, :, 1 * 5 + 2], x[1, :, 0:3, 1:4].reshape(-1))
    # col2im(ones) counts the patches covering each pixel: 9 inside, 6 on edges, 4 in corners
    counts = col2im(np.ones_like(cols), x.shape, 3, stride=1, padding=1)
    assert counts[0, 0, 1, 1] == 9 and counts[0, 0, 0, 2] == 6 and counts[0, 0, 0, 0] == 4
    per_axis = lambda n: np.array([sum(abs(y - r) <= 1 for y in range(n)) for r in range(n)])
    np.testing.assert_array_equal(counts[1, 2], np.outer(per_axis(4), per_axis(5)))


@given(conv_case(max_hw=7))
def test_col2im_is_adjoint_of_im2col(case):
    x, w, _, kw = case
    k = w.shape[2:]
    cols = im2col(x, k, **kw)
    g = np.random.default_rng(1).standard_normal(cols.shape)
    lhs, rhs = np.sum(cols * g), np.sum(x * col2im(g, x.shape, k, **kw))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


# --- gradients -----------------------------------------------------------------------------------------
@given(conv_case(max_hw=6))
def test_conv2d_gradcheck(case):
    x, w, b, kw = case
    inputs = [x, w, b]
    wrt = [0, 1] + ([2] if b is not None else [])
    for path in PATHS:
        with forced_path(path):
            gradcheck(conv2d_forward, conv2d_backward, inputs, wrt=wrt, settings=kw, max_checks=40)


@given(transpose_case(max_hw=4))
def test_conv_transpose2d_gradcheck(case):
    x, w, b, kw = case
    wrt = [0, 1] + ([2] if b is not None else [])
    for path in PATHS:
        with forced_path(path):
            gradcheck(conv_transpose2d_forward, conv_transpose2d_backward, [x, w, b], wrt=wrt, settings=kw,
                      max_checks=40)


@given(conv_case())
def test_conv2d_adjoint_in_x_and_w(case):
    x, w, _, kw = case
    for path in PATHS:
        with forced_path(path):
            adjoint_check(conv2d_forward, conv2d_backward, [x, w, None], wrt=0, settings=kw)
            adjoint_check(conv2d_forward, conv2d_backward, [x, w, None], wrt=1, settings=kw)


@given(transpose_case())
def test_conv_transpose2d_adjoint_in_x_and_w(case):
    x, w, _, kw = case
    for path in PATHS:
        with forced_path(path):
            adjoint_check(conv_transpose2d_forward, conv_transpose2d_backward, [x, w, None], wrt=0, settings=kw)
            adjoint_check(conv_transpose2d_forward, conv_transpose2d_backward, [x, w, None], wrt=1, settings=kw)


@given(conv_case())
def test_conv_transpose2d_is_conv2d_input_gradient(case):
    """conv_transpose2d(y, w) == d/dx <conv2d(x, w), y>, with output_padding recovering x's size."""
    x, w, _, kw = case
    out, cache = conv2d_forward(x, w, None, **kw)
    y = np.random.default_rng(2).standard_normal(out.shape)
    dx = conv2d_backward(y, cache)[0]
    op = tuple(
        x.shape[2 + a] - conv_transpose2d_output_size(out.shape[2 + a], w.shape[2 + a], kw["stride"][a],
                                                      kw["padding"][a], 0, kw["dilation"][a])
        for a in (0, 1)
    )
    assert min(op) >= 0
    for path in PATHS:
        with forced_path(path):
            t, _ = conv_transpose2d_forward(y, w, None, output_padding=op, **kw)
        np.testing.assert_allclose(t, dx, rtol=1e-12, atol=1e-12)


# --- chunking, dtypes, errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("budget", [64, 6000])  # 64 B: one output row / image per chunk; 6000 B: two images
def test_chunked_path_equals_unchunked(monkeypatch, rng, budget, path):
    x = rng.standard_normal((3, 2, 9, 8))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    wt = rng.standard_normal((2, 4, 3, 3))
    for kw in [dict(stride=2, padding=1, dilation=1), dict(stride=1, padding=1, dilation=2)]:
        op = kw["stride"] - 1
        with forced_path(path):
            ref, cache = conv2d_forward(x, w, b, **kw)
            g = rng.standard_normal(ref.shape)
            ref_grads = conv2d_backward(g, cache)
            ref_t, cache_t = conv_transpose2d_forward(x, wt, b, output_padding=op, **kw)
            gt = rng.standard_normal(ref_t.shape)
            ref_t_grads = conv_transpose2d_backward(gt, cache_t)
            with monkeypatch.context() as m:
                m.setattr(conv_paths, "COL_BUDGET_BYTES", budget)
                assert len(list(conv_paths.col_chunks(3, ref.shape[2:], 2 * 9, 8))) > 1  # really chunked
                # the shifted path's tall grid for the dilated case: (C + O) * Hs * P floats per image
                assert len(list(conv_paths.image_chunks(3, (2 + 4) * 10 * 9 * 8))) > 1
                out, cache = conv2d_forward(x, w, b, **kw)
                grads = conv2d_backward(g, cache)
                out_t, cache_t = conv_transpose2d_forward(x, wt, b, output_padding=op, **kw)
                t_grads = conv_transpose2d_backward(gt, cache_t)
        # float64, the same products summed in a different grouping
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out_t, ref_t, rtol=1e-12, atol=1e-12)
        for a, r in zip(grads + t_grads, ref_grads + ref_t_grads, strict=True):
            np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (2, 2, 0)])
def test_float32_is_preserved(rng, k, s, p):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out, cache = conv2d_forward(x, w, b, stride=s, padding=p)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in conv2d_backward(np.ones_like(out), cache))
    wt = rng.standard_normal((3, 4, k, k)).astype(np.float32)
    out_t, cache_t = conv_transpose2d_forward(x, wt, b, stride=s, padding=p)
    assert out_t.dtype == np.float32
    assert all(g.dtype == np.float32 for g in conv_transpose2d_backward(np.ones_like(out_t), cache_t))
    # float32 against the float64 nested loops: ~1e-6 relative rounding over 27-term sums
    ref = naive_conv2d(x.astype(np.float64), w.astype(np.float64), b, (s, s), (p, p), (1, 1))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise(rng):
    x = rng.standard_normal((1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        conv2d_forward(x[0], rng.standard_normal((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"3 channels.*\(4, 2, 3, 3\)"):
        conv2d_forward(x, rng.standard_normal((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="at least 1x1"):
        conv2d_forward(x, rng.standard_normal((4, 3, 9, 9)))
    with pytest.raises(ValueError, match="bias"):
        conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(3))
    with pytest.raises(ValueError, match="stride"):
        conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)), stride=0)
    with pytest.raises(ValueError, match=r"4 channels.*\(3, 2, 2, 2\)"):
        conv_transpose2d_forward(rng.standard_normal((1, 4, 5, 5)), rng.standard_normal((3, 2, 2, 2)))
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d_forward(x, rng.standard_normal((3, 2, 2, 2)), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="at least 1x1"):
        conv_transpose2d_forward(x[:, :, :1, :1], rng.standard_normal((3, 2, 1, 1)), padding=1)


# --- modules and the tape ------------------------------------------------------------------------------
def test_conv2d_module_state_dict_and_init():
    m = Conv2d(16, 8, 3, padding=1, rng=np.random.default_rng(0))
    sd = m.state_dict()
    assert list(sd) == ["weight", "bias"]
    assert sd["weight"].shape == (8, 16, 3, 3) and sd["bias"].shape == (8,)
    assert sd["weight"].dtype == np.float32
    bound = 1 / np.sqrt(16 * 9)  # torch default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +)
    assert np.abs(sd["weight"]).max() <= bound and np.abs(sd["weight"]).max() > 0.9 * bound
    assert list(Conv2d(4, 4, 1, bias=False).state_dict()) == ["weight"]
    t = ConvTranspose2d(8, 4, 2, stride=2, rng=np.random.default_rng(0))
    assert list(t.state_dict()) == ["weight", "bias"] and t.weight.shape == (8, 4, 2, 2)


def test_modules_backward_through_tape(rng):
    m = Conv2d(3, 5, 3, stride=2, padding=1, rng=rng)
    up = ConvTranspose2d(5, 2, 2, stride=2, rng=rng)
    x = Tensor(rng.standard_normal((2, 3, 8, 6)).astype(np.float32), requires_grad=True)
    y = up(m(x))
    assert y.shape == (2, 2, 8, 6)
    y.backward(np.ones(y.shape, np.float32))
    assert x.grad.shape == x.shape and m.weight.grad.shape == m.weight.shape and up.bias.grad.shape == (2,)
    # d(sum y)/d bias_up = number of output pixels per channel
    np.testing.assert_allclose(up.bias.grad, np.full(2, 2 * 8 * 6), rtol=1e-6)


def test_conv2d_op_records_on_tape(rng):
    x = Tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    out = conv2d(x, w, None, padding=1)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    _, cache = conv2d_forward(x.data, w.data, None, padding=1)
    dx, dw, _ = conv2d_backward(g, cache)
    np.testing.assert_allclose(x.grad, dx)
    np.testing.assert_allclose(w.grad, dw)


# --- torch parity (oracle) --------------------------------------------------------------------------------
@pytest.mark.oracle
@pytest.mark.parametrize("shape,k,s,p,d", [((2, 8, 13, 11), 3, 1, 1, 1), ((1, 3, 20, 17), 7, 2, 3, 1),
                                           ((2, 16, 9, 9), 3, 2, 2, 2), ((1, 8, 10, 12), 1, 2, 0, 1)])
def test_conv2d_matches_torch(torch, rng, shape, k, s, p, d):
    F = torch.nn.functional
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((6, shape[1], k, k)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    out, cache = conv2d_forward(x, w, b, stride=s, padding=p, dilation=d)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    to = F.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d)
    g = rng.standard_normal(out.shape).astype(np.float32)
    to.backward(torch.tensor(g))
    # float32 both sides, different summation orders over up to C*k*k*N*H*W terms
    tol = dict(rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out, to.detach().numpy(), **tol)
    for mine, theirs in zip(conv2d_backward(g, cache), (tx, tw, tb), strict=True):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), **tol)


@pytest.mark.oracle
@pytest.mark.parametrize("k,s,p,op,d", [(2, 2, 0, 0, 1), (3, 2, 1, 1, 1), (3, 1, 1, 0, 2)])
def test_conv_transpose2d_matches_torch(torch, rng, k, s, p, op, d):
    F = torch.nn.functional
    x = rng.standard_normal((2, 6, 7, 5)).astype(np.float32)
    w = rng.standard_normal((6, 4, k, k)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out, cache = conv_transpose2d_forward(x, w, b, stride=s, padding=p, output_padding=op, dilation=d)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    to = F.conv_transpose2d(tx, tw, tb, stride=s, padding=p, output_padding=op, dilation=d)
    g = rng.standard_normal(out.shape).astype(np.float32)
    to.backward(torch.tensor(g))
    tol = dict(rtol=1e-4, atol=1e-3)  # float32 both sides
    np.testing.assert_allclose(out, to.detach().numpy(), **tol)
    for mine, theirs in zip(conv_transpose2d_backward(g, cache), (tx, tw, tb), strict=True):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), **tol)
