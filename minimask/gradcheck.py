"""The one gradient-check helper every test (and chapter 00) uses: central differences in float64.

`gradcheck(forward, backward, inputs, wrt=..., settings)` builds the scalar
    L(inputs) = sum(forward(*inputs, **settings)[0] * G)
for a fixed random G, and compares `backward(G, cache)` with (L(x + eps) - L(x - eps)) / 2eps for
every element (or a random subset of `max_checks` elements per input, for big inputs).
Float64 and eps = 1e-6 give about 1e-9 truncation + 1e-10 rounding error, far below the tolerance.

`adjoint_check(forward, backward, inputs, wrt=i)` checks <f(x), g> == <x, f^T(g)> for an op that
is linear in input i: one forward, one backward, one dot product each side.
Chapter: nbs/00_arrays_and_autograd.ipynb
"""

from __future__ import annotations

import numpy as np


def _as_tuple(grads, n):
    if not isinstance(grads, tuple):
        grads = (grads,)
    return tuple(grads) + (None,) * (n - len(grads))


def gradcheck(forward, backward, inputs, wrt=None, settings=None, eps=1e-6, atol=1e-6, rtol=1e-5,
              max_checks=200, seed=0):
    """Assert analytic and numeric gradients agree. Returns the max abs error seen.

    inputs:  list of float64 arrays (or None / int arrays for non-differentiable inputs)
    wrt:     indices of the inputs to check (default: every float input)
    """
    settings = settings or {}
    rng = np.random.default_rng(seed)
    inputs = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in inputs]
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    for i in wrt:
        assert inputs[i].dtype == np.float64, f"input {i} must be float64 for a gradient check"

    out, cache = forward(*inputs, **settings)
    G = rng.standard_normal(np.shape(out))
    analytic = _as_tuple(backward(G, cache), len(inputs))

    def loss():
        o, _ = forward(*inputs, **settings)
        return float(np.sum(np.asarray(o, dtype=np.float64) * G))

    worst = 0.0
    for i in wrt:
        x = inputs[i]
        a = analytic[i]
        assert a is not None, f"backward returned no gradient for input {i}"
        assert a.shape == x.shape, f"gradient of input {i} has shape {a.shape}, input {x.shape}"
        flat = x.reshape(-1)  # a view: writes go into inputs[i]
        idx = np.arange(flat.size)
        if flat.size > max_checks:
            idx = rng.choice(flat.size, size=max_checks, replace=False)
        numeric = np.empty(idx.size)
        for j, k in enumerate(idx):
            old = flat[k]
            flat[k] = old + eps
            lp = loss()
            flat[k] = old - eps
            lm = loss()
            flat[k] = old
            numeric[j] = (lp - lm) / (2 * eps)
        got = a.reshape(-1)[idx]
        err = np.abs(got - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            k = int(np.argmax(err))
            raise AssertionError(
                f"gradient of input {i} wrong at {bad.sum()}/{idx.size} checked elements; worst: flat index "
                f"{idx[k]} analytic {got[k]:.8g} numeric {numeric[k]:.8g}"
            )
        worst = max(worst, float(err.max(initial=0.0)))
    return worst


def adjoint_check(forward, backward, inputs, wrt=0, settings=None, rtol=1e-10, seed=0):
    """Assert <f(x), g> == <x, backward(g)[wrt]> for an op linear in input `wrt` (float64)."""
    settings = settings or {}
    rng = np.random.default_rng(seed)
    out, cache = forward(*inputs, **settings)
    g = rng.standard_normal(np.shape(out))
    gx = _as_tuple(backward(g, cache), len(inputs))[wrt]
    lhs = float(np.sum(np.asarray(out, dtype=np.float64) * g))
    rhs = float(np.sum(inputs[wrt] * gx))
    scale = max(1.0, abs(lhs), abs(rhs))
    assert abs(lhs - rhs) <= rtol * scale * 10, f"adjoint mismatch: <f(x), g> = {lhs!r}, <x, f^T g> = {rhs!r}"
    return lhs, rhs


def tape_gradcheck(params, loss_fn, max_checks=12, atol=1e-6, rtol=1e-5):
    """gradcheck of a whole tape computation w.r.t. some Parameters / leaf Tensors (float64).

    `loss_fn()` builds a scalar Tensor from the current `.data` of `params`; the forward sets their
    data to the perturbed arrays and reruns it, the backward runs the tape. Checks every stage a
    model chains together at once, as the per-op checks cannot.
    """
    def forward(*arrays):
        for p, a in zip(params, arrays, strict=True):
            p.data = a
        out = loss_fn()
        return out.data, out

    def backward(g, out):
        for p in params:
            p.grad = None
        out.backward(np.asarray(g, dtype=out.data.dtype))
        return tuple(p.grad for p in params)

    inputs = [np.array(p.data, dtype=np.float64) for p in params]
    return gradcheck(forward, backward, inputs, max_checks=max_checks, atol=atol, rtol=rtol)
