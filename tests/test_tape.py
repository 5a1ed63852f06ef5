"""The tape: op registration, topological backward, accumulation, no_grad, error messages.

These tests build their own tiny ops (square, matmul, scale) so the tape is tested on its own,
independently of the layer library.
"""

import numpy as np
import pytest
from gradcheck import gradcheck
from hypothesis import given
from hypothesis import strategies as st

from minimask import tape
from minimask.tape import Tensor, no_grad


def square_forward(x):
    return x * x, x


def square_backward(dout, x):
    # forward was: x * x
    return 2 * x * dout


def matmul_forward(a, b):
    return a @ b, (a, b)


def matmul_backward(dout, cache):
    a, b = cache
    # forward was: a @ b
    return dout @ b.T, a.T @ dout


def scale_forward(x, factor=1.0):
    return x * factor, factor


def scale_backward(dout, factor):
    return dout * factor


square = tape.op(square_forward, square_backward)
matmul = tape.op(matmul_forward, matmul_backward)
scale = tape.op(scale_forward, scale_backward)


def total(x):
    return tape.op(lambda a: (a.sum(), a.shape), lambda d, s: np.broadcast_to(d, s).copy(), name="sum")(x)


def test_op_keeps_forward_and_backward_reachable():
    assert square.forward is square_forward and square.backward is square_backward
    assert square.__name__ == "square"


def test_chain_rule_matches_numeric_gradient():
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    loss = total(square(matmul(a, b)))
    loss.backward()

    def f(a_, b_):
        return float(np.sum((a_ @ b_) ** 2))

    eps = 1e-6
    for t, other, pos in ((a, b, 0), (b, a, 1)):
        num = np.zeros_like(t.data)
        for idx in np.ndindex(t.shape):
            p, m = t.data.copy(), t.data.copy()
            p[idx] += eps
            m[idx] -= eps
            args_p = (p, other.data) if pos == 0 else (other.data, p)
            args_m = (m, other.data) if pos == 0 else (other.data, m)
            num[idx] = (f(*args_p) - f(*args_m)) / (2 * eps)
        np.testing.assert_allclose(t.grad, num, rtol=1e-6, atol=1e-8)


def test_gradients_accumulate_over_two_branches():
    # y = 3x + x^2 : x feeds two branches, its gradient is the sum 3 + 2x
    x = Tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    add = tape.op(lambda a, b: (a + b, None), lambda d, c: (d, d), name="add")
    total(add(scale(x, factor=3.0), square(x))).backward()
    np.testing.assert_allclose(x.grad, 3.0 + 2.0 * x.data)


def test_leaf_grad_accumulates_across_backward_calls():
    x = Tensor(np.array([2.0]), requires_grad=True)
    total(square(x)).backward()
    total(square(x)).backward()
    np.testing.assert_allclose(x.grad, [8.0])  # 2 * (2x) at x = 2


def test_diamond_graph_calls_each_backward_once():
    calls = []

    def fwd(x):
        return x * 2.0, None

    def bwd(d, c):
        calls.append(1)
        return d * 2.0

    dbl = tape.op(fwd, bwd, name="double")
    add = tape.op(lambda a, b: (a + b, None), lambda d, c: (d, d), name="add")
    x = Tensor(np.ones(3), requires_grad=True)
    h = dbl(x)                      # one node, read twice below
    total(add(square(h), h)).backward()
    assert len(calls) == 1
    np.testing.assert_allclose(x.grad, (2 * 2.0 + 1) * 2.0)  # d/dx [(2x)^2 + 2x] at x=1


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = square(x)
    assert not y.requires_grad and y.node is None
    assert tape.is_grad_enabled()


def test_inputs_without_requires_grad_get_no_node():
    y = square(Tensor(np.ones(3)))
    assert y.node is None and not y.requires_grad
    y2 = square(np.ones(3))  # plain arrays are accepted too
    assert isinstance(y2, Tensor)


def test_backward_twice_through_freed_graph_raises():
    x = Tensor(np.ones(2), requires_grad=True)
    h = square(x)
    total(h).backward()
    with pytest.raises(RuntimeError, match="second time"):
        total(h).backward()


def test_wrong_gradient_shape_from_op_is_reported():
    bad = tape.op(lambda x: (x.sum(axis=0), None), lambda d, c: d, name="bad_sum")
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match="bad_sum"):
        total(bad(x)).backward()


def test_missing_gradient_for_required_input_is_reported():
    half = tape.op(lambda a, b: (a + b, None), lambda d, c: (d,), name="half")
    a = Tensor(np.ones(2), requires_grad=True)
    b = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="input 1"):
        total(half(a, b)).backward()


def test_backward_needs_scalar_or_explicit_grad():
    x = Tensor(np.ones(3), requires_grad=True)
    y = square(x)
    with pytest.raises(ValueError, match="scalar"):
        y.backward()
    y.backward(np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(x.grad, [2.0, 0.0, 4.0])


def test_retain_grad_keeps_intermediate_gradient():
    x = Tensor(np.array([3.0]), requires_grad=True)
    h = square(x).retain_grad()
    total(scale(h, factor=5.0)).backward()
    np.testing.assert_allclose(h.grad, [5.0])
    np.testing.assert_allclose(x.grad, [30.0])


def test_deep_chain_does_not_hit_recursion_limit():
    x = Tensor(np.ones(2), requires_grad=True)
    h = x
    for _ in range(5000):
        h = scale(h, factor=1.0)
    total(h).backward()
    np.testing.assert_allclose(x.grad, [1.0, 1.0])


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**16))
def test_gradcheck_helper_accepts_correct_and_rejects_wrong_backward(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    gradcheck(matmul_forward, matmul_backward, [a, b])

    def wrong_backward(dout, cache):
        ga, gb = matmul_backward(dout, cache)
        return ga * 1.01, gb  # a 1% error in one gradient must be caught

    with pytest.raises(AssertionError):
        gradcheck(matmul_forward, wrong_backward, [a + 0.5, b + 0.5])


def test_tensor_arithmetic_with_python_scalars_keeps_float32():
    t = Tensor(np.ones(3, np.float32), requires_grad=True)
    outs = [t - 1.0, 1.0 - t, t / 2, -t, t * 2.0, 2 * t + t]
    assert [o.dtype for o in outs] == [np.float32] * len(outs)
    np.testing.assert_array_equal(np.stack([o.data for o in outs]), [[0] * 3, [0] * 3, [0.5] * 3, [-1] * 3, [2] * 3,
                                                                      [3] * 3])
    (1.0 - t / 2).sum().backward()
    np.testing.assert_array_equal(t.grad, [-0.5] * 3)


def test_backward_is_told_which_input_gradients_are_needed():
    seen = []

    def fwd(a, b):
        return a * b, (a, b)

    def bwd(dout, cache, needs_input_grad=(True, True)):
        seen.append(needs_input_grad)
        a, b = cache
        return (dout * b if needs_input_grad[0] else None), (dout * a if needs_input_grad[1] else None)

    prod = tape.op(fwd, bwd)
    x = Tensor(np.ones(2))                      # like an image: no gradient wanted
    w = Tensor(np.full(2, 3.0), requires_grad=True)
    total(prod(x, w)).backward()
    assert seen == [(False, True)]
    np.testing.assert_array_equal(w.grad, [1.0, 1.0])


def test_conv_skips_the_image_gradient(monkeypatch):
    import minimask.conv as conv_module
    import minimask.fast.conv as conv_engine

    calls = []
    for module, name in ((conv_module, "_input_grad_gemm"), (conv_engine, "input_grad")):  # reference, engine
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    rng = np.random.default_rng(0)
    image = Tensor(rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    w = Tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    total(conv_module.conv2d(image, w, None, padding=1)).backward()
    assert w.grad is not None and calls == []
    image.requires_grad = True
    total(conv_module.conv2d(image, w, None, padding=1)).backward()
    assert calls == [1] and image.grad.shape == image.shape
