"""Core layers: float64 gradient checks over drawn shapes, adjoint tests for the linear ops,
torch/torchvision parity (oracle), tape integration and bad-input errors.

Tolerances: gradient and adjoint checks run in float64 (gradcheck's defaults: central differences
with eps=1e-6 are accurate to ~1e-9). Oracle comparisons in float64 use rtol 1e-10-ish bounds
(different summation orders only); float32 ones use 1e-5 relative (a few ulps of ~1e-7 times a
reduction depth of at most a few hundred).
"""

import numpy as np
import pytest
from gradcheck import adjoint_check, gradcheck
from hypothesis import assume, given
from hypothesis import strategies as st

from minimask import layers as L
from minimask.module import Sequential
from minimask.tape import Tensor, no_grad

seeds = st.integers(0, 2**31 - 1)


def _rng(seed):
    return np.random.default_rng(seed)


def _distinct(rng, shape, spacing=0.1):
    """Float64 values all at least `spacing` apart (so max-pool argmaxes never flip under eps=1e-6)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * spacing - n * spacing / 2).reshape(shape).astype(np.float64)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: b drops some leading axes of a and sets others to 1 (and vice versa)."""
    a = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    drop = draw(st.integers(0, len(a)))
    b = [1 if draw(st.booleans()) else n for n in a[drop:]]
    if draw(st.booleans()):
        a, b = b, a
    return tuple(a), tuple(b)


# ------------------------------------------------------------------------------------------------
# gradient checks (float64, drawn shapes and settings)
# ------------------------------------------------------------------------------------------------


@given(broadcast_pair(), seeds)
def test_add_grad(shapes, seed):
    rng = _rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes)
    gradcheck(L.add_forward, L.add_backward, [a, b])


@given(broadcast_pair(), seeds)
def test_mul_grad(shapes, seed):
    rng = _rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes)
    gradcheck(L.mul_forward, L.mul_backward, [a, b])


@given(st.lists(st.integers(1, 4), max_size=3), st.floats(-3, 3), seeds)
def test_scalar_operand_grad(shape, c, seed):
    # a Python scalar operand: the array gets a gradient, the scalar gets None
    x = _rng(seed).standard_normal(shape)
    gradcheck(L.mul_forward, L.mul_backward, [x, c], wrt=[0])
    gradcheck(L.add_forward, L.add_backward, [x, c], wrt=[0])
    _, cache = L.mul_forward(x, c)
    assert L.mul_backward(np.ones_like(x), cache)[1] is None


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), seeds)
def test_sum_mean_grad(shape, seed):
    x = _rng(seed).standard_normal(shape)
    gradcheck(L.sum_all_forward, L.sum_all_backward, [x])
    gradcheck(L.mean_all_forward, L.mean_all_backward, [x])
    assert L.sum_all_forward(x)[0].shape == () and L.mean_all_forward(x)[0].shape == ()


@given(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 5), st.integers(1, 5), st.booleans(), seeds)
def test_linear_grad(lead, n_in, n_out, with_bias, seed):
    rng = _rng(seed)
    x = rng.standard_normal((*lead, n_in))
    w = rng.standard_normal((n_out, n_in))
    b = rng.standard_normal(n_out) if with_bias else None
    gradcheck(L.linear_forward, L.linear_backward, [x, w, b])


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_relu_sigmoid_grad(shape, seed):
    rng = _rng(seed)
    u = rng.standard_normal(shape)
    x = np.sign(u) * (0.1 + np.abs(u))          # away from the kink at 0
    gradcheck(L.relu_forward, L.relu_backward, [x])
    gradcheck(L.sigmoid_forward, L.sigmoid_backward, [3 * u])


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data(), seeds)
def test_softmax_grad(shape, data, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = 2 * _rng(seed).standard_normal(shape)
    gradcheck(L.softmax_forward, L.softmax_backward, [x], settings={"dim": dim})
    np.testing.assert_allclose(L.softmax_forward(x, dim=dim)[0].sum(axis=dim), 1.0, rtol=1e-12)


@st.composite
def pool_case(draw):
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    assume(H + 2 * p >= k and W + 2 * p >= k)
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), dict(kernel_size=k, stride=s, padding=p)


@given(pool_case(), seeds)
def test_max_pool2d_grad(case, seed):
    shape, settings = case
    x = _distinct(_rng(seed), shape)
    gradcheck(L.max_pool2d_forward, L.max_pool2d_backward, [x], settings=settings)


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), seeds)
def test_frozen_batch_norm_grad(n, c, h, w, seed):
    rng = _rng(seed)
    x = rng.standard_normal((n, c, h, w))
    stats = [rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.1, 2, c)]
    gradcheck(L.frozen_batch_norm_forward, L.frozen_batch_norm_backward, [x, *stats], wrt=[0])


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.sampled_from([(), (1, 1), (2, 3), (4, 1)]),
       st.booleans(), seeds)
def test_group_norm_grad(n, groups, per_group, spatial, affine, seed):
    rng = _rng(seed)
    c = groups * per_group
    x = rng.standard_normal((n, c, *spatial))
    w, b = (rng.standard_normal(c), rng.standard_normal(c)) if affine else (None, None)
    if per_group * int(np.prod(spatial)) == 1:
        # one element per group: x_hat == 0 whatever x is, so dx must be exactly 0
        out, cache = L.group_norm_forward(x, w, b, num_groups=groups)
        assert not np.any(L.group_norm_backward(np.ones_like(out), cache)[0])
    gradcheck(L.group_norm_forward, L.group_norm_backward, [x, w, b], settings={"num_groups": groups})


@st.composite
def resize_case(draw):
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["x2", "int", "size", "float"]))
    if kind == "x2":
        settings = {"scale_factor": 2}
    elif kind == "int":
        settings = {"scale_factor": (draw(st.integers(1, 3)), draw(st.integers(1, 3)))}
    elif kind == "size":
        settings = {"size": (draw(st.integers(1, 9)), draw(st.integers(1, 9)))}
    else:
        f = draw(st.sampled_from([0.5, 0.7, 1.3, 1.5, 2.5]))
        assume(int(H * f) >= 1 and int(W * f) >= 1)
        settings = {"scale_factor": f}
    return (draw(st.integers(1, 2)), draw(st.integers(1, 2)), H, W), settings


@given(resize_case(), seeds)
def test_interpolate_grad_and_adjoint(case, seed):
    shape, settings = case
    x = _rng(seed).standard_normal(shape)
    gradcheck(L.interpolate_forward, L.interpolate_backward, [x], settings=settings)
    adjoint_check(L.interpolate_forward, L.interpolate_backward, [x], settings=settings, seed=seed)


@given(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=1, max_size=3), st.data(), seeds)
def test_concatenate_grad_and_adjoint(k, shape, data, seed):
    rng = _rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    arrays = []
    for _ in range(k):
        s = list(shape)
        s[axis] = data.draw(st.integers(0, 3))
        arrays.append(rng.standard_normal(s))
    gradcheck(L.concatenate_forward, L.concatenate_backward, arrays, settings={"axis": axis},
              wrt=[i for i, a in enumerate(arrays) if a.size])
    for i in range(k):  # linear in input i once the others are zero
        only_i = [a if j == i else np.zeros_like(a) for j, a in enumerate(arrays)]
        adjoint_check(L.concatenate_forward, L.concatenate_backward, only_i, wrt=i, settings={"axis": axis})


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data(), seeds)
def test_shape_ops_grad_and_adjoint(shape, data, seed):
    x = _rng(seed).standard_normal(shape)
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    start = data.draw(st.integers(0, len(shape) - 1))
    cases = [
        (L.reshape_forward, L.reshape_backward, {"shape": (-1,) + tuple(shape[:0:-1])}),
        (L.flatten_forward, L.flatten_backward, {"start_dim": start}),
        (L.transpose_forward, L.transpose_backward, {"axes": axes}),
    ]
    for fwd, bwd, settings in cases:
        gradcheck(fwd, bwd, [x], settings=settings)
        adjoint_check(fwd, bwd, [x], settings=settings, seed=seed)
    assert L.transpose_forward(x, axes)[0].shape == tuple(np.array(shape)[list(axes)])


@given(st.integers(1, 5), st.lists(st.integers(1, 3), max_size=2), st.integers(0, 8), seeds)
def test_gather_rows_grad_and_adjoint(n, rest, k, seed):
    rng = _rng(seed)
    x = rng.standard_normal((n, *rest))
    index = rng.integers(-n, n, size=k)          # repeats and negative indices
    gradcheck(L.gather_rows_forward, L.gather_rows_backward, [x], settings={"index": index})
    adjoint_check(L.gather_rows_forward, L.gather_rows_backward, [x], settings={"index": index}, seed=seed)


def test_gather_rows_repeats_accumulate():
    x = np.arange(6.0).reshape(3, 2)
    out, cache = L.gather_rows_forward(x, np.array([2, 2, 0, 2]))
    np.testing.assert_array_equal(out, x[[2, 2, 0, 2]])
    dx = L.gather_rows_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx, [[1, 1], [0, 0], [3, 3]])


# ------------------------------------------------------------------------------------------------
# adjoint tests for the remaining linear ops
# ------------------------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 5), st.integers(1, 5), seeds)
def test_linear_adjoint(lead, n_in, n_out, seed):
    rng = _rng(seed)
    x, w = rng.standard_normal((*lead, n_in)), rng.standard_normal((n_out, n_in))
    adjoint_check(L.linear_forward, L.linear_backward, [x, w, None], wrt=0, seed=seed)   # linear in x
    adjoint_check(L.linear_forward, L.linear_backward, [x, w, None], wrt=1, seed=seed)   # and in W


@given(broadcast_pair(), st.floats(-3, 3), seeds)
def test_add_mul_adjoint(shapes, c, seed):
    rng = _rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes)
    zeros_b = np.zeros(shapes[1])  # x -> x + 0 (broadcast) is linear in x
    adjoint_check(L.add_forward, L.add_backward, [a, zeros_b], wrt=0, seed=seed)
    adjoint_check(L.add_forward, L.add_backward, [np.zeros(shapes[0]), b], wrt=1, seed=seed)
    adjoint_check(L.mul_forward, L.mul_backward, [a, c], wrt=0, seed=seed)
    adjoint_check(L.mul_forward, L.mul_backward, [a, b], wrt=0, seed=seed)  # linear in a for fixed b


@given(pool_case(), seeds)
def test_max_pool2d_adjoint(case, seed):
    # piecewise linear: with distinct values the argmax pattern is fixed, and then it is a selection
    shape, settings = case
    x = _distinct(_rng(seed), shape)
    adjoint_check(L.max_pool2d_forward, L.max_pool2d_backward, [x], settings=settings, seed=seed)


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), seeds)
def test_frozen_batch_norm_adjoint(n, c, hw, seed):
    rng = _rng(seed)
    x = rng.standard_normal((n, c, hw, hw))
    # bias = 0 and running_mean = 0 make shift 0, so y = x * scale is linear in x
    stats = [rng.standard_normal(c), np.zeros(c), np.zeros(c), rng.uniform(0.1, 2, c)]
    adjoint_check(L.frozen_batch_norm_forward, L.frozen_batch_norm_backward, [x, *stats], seed=seed)


# ------------------------------------------------------------------------------------------------
# semantics without the oracle
# ------------------------------------------------------------------------------------------------


def test_max_pool2d_stem_and_p6_shapes():
    x = np.random.default_rng(0).standard_normal((1, 2, 15, 16)).astype(np.float32)
    stem, _ = L.max_pool2d_forward(x, 3, stride=2, padding=1)
    p6, _ = L.max_pool2d_forward(x, 1, stride=2)
    assert stem.shape == (1, 2, 8, 8) and stem.dtype == np.float32
    np.testing.assert_array_equal(p6, x[:, :, ::2, ::2])


def test_max_pool2d_ties_go_to_first_max():
    x = np.ones((1, 1, 2, 2))
    out, cache = L.max_pool2d_forward(x, 2)
    dx = L.max_pool2d_backward(np.full_like(out, 5.0), cache)
    np.testing.assert_array_equal(dx[0, 0], [[5, 0], [0, 0]])


def test_interpolate_nearest_index_rule():
    # torch's 'nearest': output row d copies row floor(d * H / OH)
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    out, _ = L.interpolate_forward(x, size=(8, 1))
    np.testing.assert_array_equal(out[0, 0, :, 0], np.floor(np.arange(8) * 5 / 8))
    down, _ = L.interpolate_forward(x, size=(2, 1))
    np.testing.assert_array_equal(down[0, 0, :, 0], [0, 2])


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    f32 = lambda c: np.ones(c, np.float32)
    outs = [
        L.add_forward(x, 1.5)[0], L.mul_forward(x, 0.5)[0], L.relu_forward(x)[0], L.sigmoid_forward(x)[0],
        L.max_pool2d_forward(x, 3, stride=2, padding=1)[0],
        L.frozen_batch_norm_forward(x, f32(4), f32(4), f32(4), f32(4))[0],
        L.group_norm_forward(x, f32(4), f32(4), num_groups=2)[0],
        L.interpolate_forward(x, scale_factor=2)[0], L.interpolate_forward(x, size=(7, 5))[0],
        L.linear_forward(x, np.ones((3, 6), np.float32), np.ones(3, np.float32))[0],
    ]
    for o in outs:
        assert o.dtype == np.float32
    for fwd, bwd, args, kw in [
        (L.group_norm_forward, L.group_norm_backward, (x, f32(4), f32(4)), {"num_groups": 2}),
        (L.interpolate_forward, L.interpolate_backward, (x,), {"size": (7, 5)}),
        (L.max_pool2d_forward, L.max_pool2d_backward, (x,), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ]:
        out, cache = fwd(*args, **kw)
        grads = bwd(np.ones_like(out), cache)
        for g in grads if isinstance(grads, tuple) else (grads,):
            assert g.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# torch / torchvision parity (oracle)
# ------------------------------------------------------------------------------------------------


def _torch_grad(torch, fn, arrays, g):
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.tensor(g))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


@pytest.mark.oracle
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (1, 2, 0), (2, 2, 0), (3, 1, 1), (3, 3, 0), (2, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_matches_torch(torch, k, s, p, dtype):
    rng = np.random.default_rng(k * 10 + s)
    # small integers: many ties inside windows; all negative, so -inf padding is never the max
    x = -rng.integers(1, 4, size=(2, 3, 9, 8)).astype(dtype)
    out, cache = L.max_pool2d_forward(x, k, stride=s, padding=p)
    g = rng.standard_normal(out.shape).astype(dtype)
    t_out, (t_dx,) = _torch_grad(torch, lambda t: torch.nn.functional.max_pool2d(t, k, s, p), [x], g)
    np.testing.assert_array_equal(out, t_out)                              # a selection: exact
    # overlapping windows sum a few gradients in a different order: ulps only; a wrong route is O(1)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(L.max_pool2d_backward(g, cache), t_dx, rtol=tol, atol=tol)


@pytest.mark.oracle
def test_max_pool2d_nan_and_inf_like_torch(torch):
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    x[0, 0, 1, 1], x[0, 0, 4, 2], x[0, 0, 0, 5] = np.nan, -np.inf, np.inf
    out, _ = L.max_pool2d_forward(x, 3, stride=2, padding=1)
    expect = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(out, expect)                            # NaN == NaN here


@pytest.mark.oracle
@pytest.mark.parametrize("shape,groups", [((2, 8, 5, 4), 4), ((1, 6, 3, 3), 1), ((3, 4), 2), ((2, 32, 7, 5), 32)])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_group_norm_matches_torch(torch, shape, groups, dtype, rtol):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    out, cache = L.group_norm_forward(x, w, b, num_groups=groups)
    g = rng.standard_normal(out.shape).astype(dtype)
    t_out, t_grads = _torch_grad(torch, lambda a, ww, bb: torch.nn.functional.group_norm(a, groups, ww, bb),
                                 [x, w, b], g)
    np.testing.assert_allclose(out, t_out, rtol=rtol, atol=rtol)
    # dx is a difference of terms of size |g| |w| rstd that may cancel almost completely (exactly, for
    # two elements per group), so its error is measured against that size: a few float32 ulps
    # (1e-7) times the reduction length gives < 1e-4 of it; float64 the same with 1e-16 ulps
    xg = x.astype(np.float64).reshape(shape[0], groups, -1)
    term = np.abs(g).max() * np.abs(w).max() / np.sqrt(xg.var(axis=2).min() + 1e-5)
    dx, dw, db = L.group_norm_backward(g, cache)
    np.testing.assert_allclose(dx, t_grads[0], rtol=rtol, atol=rtol * term)
    for mine, theirs in [(dw, t_grads[1]), (db, t_grads[2])]:
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=rtol * np.abs(g).sum())


@pytest.mark.oracle
@pytest.mark.parametrize(
    "hw,settings",
    [((4, 5), {"scale_factor": 2}), ((3, 3), {"size": (6, 6)}), ((5, 7), {"size": (8, 11)}),
     ((7, 9), {"size": (3, 4)}), ((13, 17), {"size": (25, 34)}), ((6, 9), {"size": (9, 6)}),
     ((5, 6), {"scale_factor": 1.7}), ((10, 7), {"scale_factor": 0.6}), ((4, 4), {"scale_factor": (3, 1)}),
     ((25, 38), {"size": (50, 76)})],
)
def test_interpolate_matches_torch(torch, hw, settings):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, *hw))
    out, cache = L.interpolate_forward(x, **settings)
    g = rng.standard_normal(out.shape)
    t_out, (t_dx,) = _torch_grad(torch, lambda t: torch.nn.functional.interpolate(t, mode="nearest", **settings),
                                 [x], g)
    np.testing.assert_array_equal(out, t_out)
    np.testing.assert_allclose(L.interpolate_backward(g, cache), t_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.oracle
def test_nearest_index_matches_torch_for_many_sizes(torch):
    # the float32 index arithmetic must agree with torch for every (in, out) pair, not just nice ones
    # (e.g. 14 -> 46: 23 * 14/46 is 7 exactly, but torch's float32 arithmetic gives row 6)
    for dtype in (torch.float32, torch.float64):
        for n_in in range(1, 24):
            r = torch.arange(n_in, dtype=dtype)
            x = (100 * r[:, None] + r[None, :]).reshape(1, 1, n_in, n_in)      # value = 100 row + col
            for n_out in range(1, 50):
                y = torch.nn.functional.interpolate(x, size=(n_out, n_out), mode="nearest").numpy()[0, 0]
                idx = L._nearest_index(n_in, n_out)
                np.testing.assert_array_equal(idx, y[:, 0] // 100, err_msg=f"rows {n_in} -> {n_out}")
                np.testing.assert_array_equal(idx, y[0, :] % 100, err_msg=f"cols {n_in} -> {n_out}")


@pytest.mark.oracle
def test_frozen_batch_norm_matches_torchvision(torch):
    from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBN

    rng = np.random.default_rng(3)
    c = 6
    tv = TVFrozenBN(c)
    state = {"weight": rng.standard_normal(c), "bias": rng.standard_normal(c),
             "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.1, 3, c)}
    tv.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
    mine = L.FrozenBatchNorm2d(c)
    assert list(mine.state_dict()) == list(tv.state_dict())       # same keys, same order
    mine.load_state_dict({k: v.numpy() for k, v in tv.state_dict().items()})
    x = rng.standard_normal((2, c, 5, 4)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    t_out, (t_dx,) = _torch_grad(torch, tv, [x], g)
    xt = Tensor(x, requires_grad=True)
    y = mine(xt)
    y.backward(g)
    # float32: identical formula (w * rsqrt(v + eps)); rsqrt vs 1/sqrt may differ by an ulp or two
    np.testing.assert_allclose(y.data, t_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xt.grad, t_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
def test_linear_and_module_keys_match_torch(torch):
    rng = np.random.default_rng(4)
    lin = L.Linear(5, 3, rng=rng)
    x = rng.standard_normal((2, 4, 5))
    w, b = lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)
    out, cache = L.linear_forward(x, w, b)
    g = rng.standard_normal(out.shape)
    t_out, t_grads = _torch_grad(torch, torch.nn.functional.linear, [x, w, b], g)
    np.testing.assert_allclose(out, t_out, rtol=1e-12)
    for mine, theirs in zip(L.linear_backward(g, cache), t_grads, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)
    # torch default init: |w| <= 1/sqrt(in)
    assert np.abs(lin.weight.data).max() <= 1 / np.sqrt(5)
    ours = Sequential([L.Linear(4, 3), L.GroupNorm(1, 3), L.ReLU(), L.FrozenBatchNorm2d(3)])
    from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBN

    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GroupNorm(1, 3), torch.nn.ReLU(), TVFrozenBN(3))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].shape == tuple(v.shape)


# ------------------------------------------------------------------------------------------------
# tape integration
# ------------------------------------------------------------------------------------------------


def test_two_branches_accumulate():
    rng = np.random.default_rng(5)
    x_data = rng.standard_normal((1, 2, 4, 4))
    x = Tensor(x_data, requires_grad=True)
    y = L.relu(x)                                                         # feeds two branches
    up = L.interpolate(L.max_pool2d(y, kernel_size=2), scale_factor=2)    # branch 1
    loss = L.sum_all(L.mul(up, 3.0)) + L.mean_all(y)                      # branch 2: mean
    loss.backward()
    # expected: the sum of each branch's gradient, computed with the plain pairs
    relu_out, relu_c = L.relu_forward(x_data)
    p, pc = L.max_pool2d_forward(relu_out, 2)
    u, uc = L.interpolate_forward(p, scale_factor=2)
    g_y = L.max_pool2d_backward(L.interpolate_backward(np.full(u.shape, 3.0), uc), pc)
    g_y = g_y + np.full(x_data.shape, 1 / x_data.size)
    np.testing.assert_allclose(x.grad, L.relu_backward(g_y, relu_c), rtol=1e-12)


def test_tensor_sugar_and_module_grads():
    rng = np.random.default_rng(6)
    lin = L.Linear(3, 2, rng=rng)
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    y = lin(x)
    loss = ((y - 1.0) * y).sum()                                          # sum(y^2 - y)
    loss.backward()
    dy = 2 * y.data - 1
    np.testing.assert_allclose(lin.weight.grad, dy.T @ x.data, rtol=1e-5)
    np.testing.assert_allclose(lin.bias.grad, dy.sum(0), rtol=1e-5)


def test_group_norm_module_grads_reach_parameters():
    rng = np.random.default_rng(7)
    gn = L.GroupNorm(2, 4)
    gn.weight.data = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xt = Tensor(x, requires_grad=True)
    gn(xt).backward(g)
    _, cache = L.group_norm_forward(x, gn.weight.data, gn.bias.data, num_groups=2)
    for got, want in zip((xt.grad, gn.weight.grad, gn.bias.grad), L.group_norm_backward(g, cache), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_no_grad_records_nothing_and_backward_twice_raises():
    x = Tensor(np.ones((1, 1, 2, 2)), requires_grad=True)
    with no_grad():
        y = L.group_norm(x, None, None, num_groups=1)
    assert not y.requires_grad and y.node is None
    z = L.sum_all(L.frozen_batch_norm(x, np.ones(1), np.zeros(1), np.zeros(1), np.ones(1)))
    z.backward()
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()


def test_frozen_bn_buffers_are_not_trained():
    bn = L.FrozenBatchNorm2d(3)
    assert bn.parameters() == [] and list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    np.testing.assert_array_equal(bn.running_var, 1)
    gn = L.GroupNorm(3, 6)
    assert [n for n, _ in gn.named_parameters()] == ["weight", "bias"]
    assert L.GroupNorm(3, 6, affine=False).parameters() == []
    assert [n for n, _ in L.Linear(2, 2, bias=False).named_parameters()] == ["weight"]


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: L.max_pool2d_forward(np.zeros((2, 3, 4)), 2), r"4-D.*\(2, 3, 4\)"),
        (lambda: L.max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, padding=2), "padding"),
        (lambda: L.max_pool2d_forward(np.zeros((1, 1, 2, 2)), 3), r"too small"),
        (lambda: L.group_norm_forward(np.zeros((2, 6, 3, 3)), num_groups=4), r"num_groups=4.*6 channels"),
        (lambda: L.group_norm_forward(np.zeros((2, 6, 3)), np.ones(5), None, num_groups=3), r"weight \(5,\)"),
        (lambda: L.frozen_batch_norm_forward(np.zeros((2, 3, 4, 4)), *[np.ones(4)] * 4), r"\(4,\).*\(2, 3, 4, 4\)"),
        (lambda: L.frozen_batch_norm_forward(np.zeros((2, 3, 4, 4)), *[np.ones(3)] * 4, eps=float("nan")), "eps"),
        (lambda: L.linear_forward(np.zeros((2, 4)), np.zeros((3, 5))), r"\(2, 4\).*\(3, 5\)"),
        (lambda: L.interpolate_forward(np.zeros((1, 1, 2, 2))), "exactly one"),
        (lambda: L.interpolate_forward(np.zeros((1, 1, 2, 2)), scale_factor=float("inf")), "scale_factor"),
        (lambda: L.interpolate_forward(np.zeros((1, 2, 2)), scale_factor=2), r"\(1, 2, 2\)"),
        (lambda: L.concatenate_forward(np.zeros((2, 3)), np.zeros((2, 4)), axis=0), r"\(2, 3\), \(2, 4\)"),
        (lambda: L.transpose_forward(np.zeros((2, 3)), (0, 0)), "permutation"),
        (lambda: L.gather_rows_forward(np.zeros((3, 2)), index=np.array([0.5])), "integer"),
        (lambda: L.GroupNorm(4, 6), "divide"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
