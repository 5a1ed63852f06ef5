"""Losses: float64 gradient checks over drawn shapes and settings, stability at extreme logits,
the all-ignored edge case, input validation, and parity with torch.nn.functional (oracle)."""

import numpy as np
import pytest
from gradcheck import gradcheck
from hypothesis import given
from hypothesis import strategies as st

from minimask import losses as L
from minimask.tape import Tensor

REDUCTIONS = st.sampled_from(["mean", "sum", "none"])
SEEDS = st.integers(0, 2**16)


# --- closed forms in float64, written differently from the package ---------------------------


def log_sigmoid64(x):
    """log(sigmoid(x)) in float64, split by sign so neither branch overflows."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(np.minimum(x, 0))))


def bce_reference(x, t):
    """-t log s(x) - (1 - t) log(1 - s(x)), with 1 - s(x) = s(-x)."""
    return -t * log_sigmoid64(x) - (1 - t) * log_sigmoid64(-np.asarray(x, dtype=np.float64))


# --- gradient checks (float64: central differences are good to ~1e-9, tolerance 1e-6) ----------


@given(n=st.integers(1, 7), k=st.integers(1, 5), reduction=REDUCTIONS,
       p_ignore=st.sampled_from([0.0, 0.3, 1.0]), seed=SEEDS)
def test_cross_entropy_gradcheck(n, k, reduction, p_ignore, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)) * 3
    t = rng.integers(0, k, size=n)
    t[rng.random(n) < p_ignore] = -100
    gradcheck(L.cross_entropy_forward, L.cross_entropy_backward, [x, t], wrt=[0],
              settings={"reduction": reduction})


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), reduction=REDUCTIONS,
       use_weight=st.booleans(), seed=SEEDS)
def test_bce_with_logits_gradcheck(shape, reduction, use_weight, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 4
    t = rng.random(shape)                                  # soft targets in [0, 1)
    inputs = [x, t]
    if use_weight:
        inputs.append(rng.random(shape[-1:]) + 0.5)        # broadcasts over the leading dims
    gradcheck(L.binary_cross_entropy_with_logits_forward, L.binary_cross_entropy_with_logits_backward,
              inputs, wrt=[0, 1], settings={"reduction": reduction})


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=2), reduction=REDUCTIONS,
       beta=st.sampled_from([0.0, 1 / 9, 0.5, 1.0, 2.0]), seed=SEEDS)
def test_smooth_l1_gradcheck(shape, reduction, beta, seed):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal(shape)
    d = rng.standard_normal(shape) * 2 * max(beta, 0.5)
    # keep every d at least 1e-3 away from the kinks |d| = beta (and d = 0 when beta = 0):
    # there the loss is not differentiable and a central difference with eps = 1e-6 straddles it
    near = np.abs(np.abs(d) - beta) < 1e-3
    d = np.where(near, np.sign(d + 1e-12) * (beta + 1e-2), d)
    gradcheck(L.smooth_l1_loss_forward, L.smooth_l1_loss_backward, [t + d, t], wrt=[0, 1],
              settings={"beta": beta, "reduction": reduction})


# --- exact values and edge cases ---------------------------------------------------------------


def test_cross_entropy_matches_naive_softmax():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    t = np.array([0, 3, -100, 1, 2, -100])
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)  # naive: fine for small logits
    keep = t != -100
    per_row = np.where(keep, -np.log(p[np.arange(6), np.where(keep, t, 0)]), 0.0)
    np.testing.assert_allclose(L.cross_entropy(x, t, reduction="none").data, per_row, rtol=1e-12)
    np.testing.assert_allclose(L.cross_entropy(x, t).data, per_row.sum() / keep.sum(), rtol=1e-12)


def test_cross_entropy_all_ignored_is_zero_with_zero_grad():
    # torch returns NaN here (0/0); we return 0 so an empty loss term adds nothing to the total
    x = Tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    t = np.full(3, -1, dtype=np.int64)
    loss = L.cross_entropy(x, t, ignore_index=-1)
    assert loss.data.shape == () and float(loss.data) == 0.0
    loss.backward()
    assert x.grad.shape == (3, 4) and np.all(x.grad == 0)


def test_empty_inputs_mean_to_zero():
    for loss in (L.cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)),
                 L.binary_cross_entropy_with_logits(np.zeros((0, 4)), np.zeros((0, 4))),
                 L.smooth_l1_loss(np.zeros((0, 4)), np.zeros((0, 4)))):
        assert float(loss.data) == 0.0


@pytest.mark.parametrize("scale", [100.0, 1000.0, 1e30])
def test_cross_entropy_extreme_logits_finite_and_exact(scale):
    # logits differ by `scale`: the correct class costs ~0, a wrong one costs ~scale
    x = np.array([[scale, 0.0, -scale], [0.0, scale, 0.0]], dtype=np.float32)
    t = np.array([0, 0])
    per_row = L.cross_entropy(x, t, reduction="none").data
    assert per_row.dtype == np.float32 and np.all(np.isfinite(per_row))
    expect = np.array([np.log1p(np.exp(-scale) + np.exp(-2 * scale)), scale + np.log1p(2 * np.exp(-scale))])
    np.testing.assert_allclose(per_row, expect, rtol=1e-6, atol=1e-30)  # float32: ~6e-8 relative


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-14), (np.float32, 1e-6)])
def test_bce_extreme_logits_accurate(dtype, rtol):
    x = np.array([-1000, -100, -30, -1, 0, 1, 30, 100, 1000], dtype=dtype)
    for tv in (0.0, 0.25, 1.0):
        t = np.full_like(x, tv)
        out, cache = L.binary_cross_entropy_with_logits_forward(x, t, reduction="none")
        assert out.dtype == dtype and np.all(np.isfinite(out))
        ref = bce_reference(x.astype(np.float64), tv)
        # relative error is what matters: loss at x=-100, t=0 is 3.7e-44, not 0
        # (float32 keeps it only as a subnormal, hence atol = the float32 subnormal step there)
        atol = 0.0 if dtype == np.float64 else 1.5e-45
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        g = L.binary_cross_entropy_with_logits_backward(np.ones_like(out), cache)[0]
        # sigmoid(x) - t written as (1 - t) s(x) - t s(-x): exact per element for t in {0, 1}, so the
        # relative check covers tiny gradients too; soft t cancels, so allow a few ulps of 1 there
        s_pos, s_neg = np.exp(log_sigmoid64(x)), np.exp(log_sigmoid64(-x.astype(np.float64)))
        assert np.all(np.isfinite(g))
        atol = 4 * np.finfo(dtype).eps if tv not in (0.0, 1.0) else 1e-300 if dtype == np.float64 else 1e-38
        np.testing.assert_allclose(g, (1 - tv) * s_pos - tv * s_neg, rtol=rtol, atol=atol)


def test_bce_integer_targets_and_no_upcast():
    x = np.array([[-2.0, 3.0]], dtype=np.float32)
    t = np.array([[0, 1]], dtype=np.uint8)                 # masks arrive as uint8
    out = L.binary_cross_entropy_with_logits(x, t)
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(out.data, bce_reference(x, t.astype(np.float64)).mean(), rtol=1e-6)


def test_smooth_l1_beta_zero_is_l1_and_bands():
    d = np.array([-3.0, -0.05, 0.0, 0.05, 2.0])
    t = np.zeros_like(d)
    np.testing.assert_array_equal(L.smooth_l1_loss(d, t, beta=0.0, reduction="none").data, np.abs(d))
    got = L.smooth_l1_loss(d, t, beta=0.1, reduction="none").data
    np.testing.assert_allclose(got, [2.95, 0.0125, 0.0, 0.0125, 1.95], rtol=1e-12)
    _, cache = L.smooth_l1_loss_forward(d, t, beta=0.0, reduction="none")
    gi, gt = L.smooth_l1_loss_backward(np.ones(5), cache)
    np.testing.assert_array_equal(gi, np.sign(d))
    np.testing.assert_array_equal(gt, -np.sign(d))


def test_losses_on_the_tape():
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    t = np.array([2, 0, 1, 1])
    loss = L.cross_entropy(x, t)
    loss.backward()
    _, cache = L.cross_entropy_forward(x.data, t)
    np.testing.assert_allclose(x.grad, L.cross_entropy_backward(np.float32(1), cache)[0], rtol=1e-6)
    assert x.grad.dtype == np.float32
    a = Tensor(rng.standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    L.smooth_l1_loss(a, b, beta=1 / 9, reduction="sum").backward()
    np.testing.assert_array_equal(a.grad, -b.grad)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("call,match", [
    (lambda: L.cross_entropy(np.zeros((3, 4)), np.zeros(2, dtype=int)), r"\(3, 4\).*\(2,\)"),
    (lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, 4, 1])), r"labels \[4\] outside \[0, 4\)"),
    (lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, -1, 1])), r"labels \[-1\]"),
    (lambda: L.cross_entropy(np.zeros((3, 4)), np.zeros(3)), "integer"),
    (lambda: L.cross_entropy(np.array([[0.0, np.nan]]), np.array([0])), "non-finite"),
    (lambda: L.cross_entropy(np.zeros((1, 2)), np.array([0]), reduction="avg"), "reduction"),
    (lambda: L.binary_cross_entropy_with_logits(np.zeros((2, 3)), np.zeros((3, 2))), r"\(2, 3\).*\(3, 2\)"),
    (lambda: L.binary_cross_entropy_with_logits(np.array([np.inf]), np.zeros(1)), "non-finite"),
    (lambda: L.binary_cross_entropy_with_logits(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2)), "weight"),
    (lambda: L.smooth_l1_loss(np.zeros((2, 4)), np.zeros((4, 2))), r"\(2, 4\).*\(4, 2\)"),
    (lambda: L.smooth_l1_loss(np.zeros(2), np.zeros(2), beta=-1.0), "beta"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- parity with torch (oracle) ---------------------------------------------------------------


def _torch_grad(torch, fn, *arrays, grad_of=2, **kw):
    """torch's output and the gradients of sum(output) w.r.t. the first `grad_of` float arrays."""
    ts = [torch.tensor(a, requires_grad=i < grad_of and a.dtype.kind == "f") for i, a in enumerate(arrays)]
    out = fn(*ts, **kw)
    out.sum().backward()
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else None for t in ts]


@pytest.mark.oracle
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_vs_torch(torch, reduction):
    rng = np.random.default_rng(5)
    row_scale = np.array([1, 1, 1, 100, 1000, 1, 10, 1, 1])[:, None]   # some rows with extreme logits
    x = (rng.standard_normal((9, 5)) * row_scale).astype(np.float32)
    t = rng.integers(0, 5, 9)
    t[[2, 7]] = -100
    want, (gx, _) = _torch_grad(torch, torch.nn.functional.cross_entropy, x, t, reduction=reduction)
    xt = Tensor(x, requires_grad=True)
    got = L.cross_entropy(xt, t, reduction=reduction)
    got.backward(np.ones_like(got.data))
    np.testing.assert_allclose(got.data, want, rtol=1e-5, atol=1e-6)  # float32 on both sides
    np.testing.assert_allclose(xt.grad, gx, rtol=1e-5, atol=1e-7)


@pytest.mark.oracle
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_vs_torch_extreme(torch, reduction):
    x = np.array([[-1000, -100, -20, -1e-3, 0, 0.5, 20, 100, 1000]] * 3, dtype=np.float32)
    t = np.array([[0.0] * 9, [1.0] * 9, [0.3] * 9], dtype=np.float32)
    w = np.linspace(0.5, 2, 9).astype(np.float32)
    want, (gx, gt, _) = _torch_grad(torch, torch.nn.functional.binary_cross_entropy_with_logits, x, t, w,
                                    reduction=reduction)
    xt, tt = Tensor(x, requires_grad=True), Tensor(t, requires_grad=True)
    got = L.binary_cross_entropy_with_logits(xt, tt, w, reduction=reduction)
    got.backward(np.ones_like(got.data))
    assert np.all(np.isfinite(got.data))
    np.testing.assert_allclose(got.data, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xt.grad, gx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tt.grad, gt, rtol=1e-6, atol=1e-7)


@pytest.mark.oracle
@pytest.mark.parametrize("beta", [0.0, 1 / 9, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_vs_torch(torch, beta, reduction):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    want, (ga, gb) = _torch_grad(torch, torch.nn.functional.smooth_l1_loss, a, b, beta=beta,
                                 reduction=reduction)
    at, bt = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    got = L.smooth_l1_loss(at, bt, beta=beta, reduction=reduction)
    got.backward(np.ones_like(got.data))
    np.testing.assert_allclose(got.data, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(at.grad, ga, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bt.grad, gb, rtol=1e-6, atol=1e-7)
