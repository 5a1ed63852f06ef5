"""Exercises of chapters 00-02: backward passes, scatter-add, convolution, group norm, losses.

Chapters: nbs/00_arrays_and_autograd.ipynb, nbs/01_convolution.ipynb, nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import numpy as np

from .. import conv, layers, losses
from ._core import check_backward, check_forward, exercise


def _rng(seed):
    return np.random.default_rng(seed)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------------------------------------
# chapter 00
# ------------------------------------------------------------------------------------------------


@exercise("00.1", "sigmoid_backward",
          "sigmoid's backward from its cached output s = sigmoid(x): return dL/dx given dout = dL/ds")
def check_sigmoid_backward(fn):
    probes = [([_rng(s).normal(0, 2, (5, 4))], {}) for s in (1, 2)]
    mistakes = [
        ("a sign error (ds/dx = s (1 - s) is positive)", lambda g, s: -g * s * (1 - s)),
        ("tanh's derivative 1 - s^2 instead of sigmoid's s (1 - s)", lambda g, s: g * (1 - s * s)),
        ("sigmoid applied twice: the cache already holds s = sigmoid(x), use it as it is",
         lambda g, s: g * _sigmoid(s) * (1 - _sigmoid(s))),
        ("dout missing from the product (the chain rule multiplies by dL/ds)", lambda g, s: s * (1 - s)),
    ]
    return check_backward("00.1", fn, layers.sigmoid_forward, probes, mistakes,
                          hint="d sigmoid(x)/dx = sigmoid(x) (1 - sigmoid(x)).")


def _scatter_add_ref(target, idx, values):
    out = np.array(target, dtype=np.float64, copy=True)
    np.add.at(out, idx, values)
    return out


def _scatter_fancy(target, idx, values):
    out = np.array(target, dtype=np.float64, copy=True)
    out[idx] += values
    return out


def _scatter_assign(target, idx, values):
    out = np.array(target, dtype=np.float64, copy=True)
    out[idx] = values
    return out


@exercise("00.2", "scatter_add",
          "return a copy of `target` with values[k] added at row idx[k], repeated indices summed")
def check_scatter_add(fn):
    r = _rng(3)
    probes = [
        (np.zeros(6), np.array([0, 2, 2, 5, 2]), np.array([1.0, 2.0, 3.0, 4.0, 5.0])),
        (r.standard_normal((5, 3)), np.array([4, 1, 4, 0]), r.standard_normal((4, 3))),
    ]
    mistakes = [
        ("`target[idx] += values`, which counts a repeated index once (the last write wins)", _scatter_fancy),
        ("an assignment instead of an addition (`target[idx] = values`)", _scatter_assign),
    ]
    return check_forward("00.2", fn, _scatter_add_ref, probes, mistakes,
                         hint="np.add.at (or a loop) sums every occurrence of a repeated index.")


def broadcast_mul_forward(a, b):
    """y = a * b with a (N, C) and b (C,) broadcast over the rows. Cache: (a, b)."""
    return a * b, (a, b)


@exercise("00.3", "broadcast_mul_backward",
          "backward of y = a * b, a (N, C), b (C,) broadcast over rows: return (da, db) from dout, (a, b)")
def check_broadcast_mul_backward(fn):
    probes = [([_rng(s).standard_normal((4, 3)), _rng(s + 10).standard_normal(3)], {}) for s in (4, 5)]
    mistakes = [
        ("db not summed over the broadcast rows (b was used by every row, its gradient is the sum)",
         lambda g, c: (g * c[1], g * c[0])),
        ("db averaged over the rows instead of summed", lambda g, c: (g * c[1], (g * c[0]).mean(axis=0))),
        ("the two gradients swapped: da multiplies dout by b, db by a",
         lambda g, c: (g * c[0], (g * c[1]).sum(axis=0))),
    ]
    return check_backward("00.3", fn, broadcast_mul_forward, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# chapter 01
# ------------------------------------------------------------------------------------------------


@exercise("01.1", "conv_output_size",
          "output length of a convolution along one axis, given size, kernel_size, stride, padding, dilation")
def check_conv_output_size(fn):
    probes = [(7, 3, 1, 1, 1), (224, 7, 2, 3, 1), (14, 3, 2, 1, 1), (32, 3, 1, 2, 2), (10, 5, 3, 0, 2),
              (9, 1, 2, 0, 1)]
    mistakes = [
        ("dilation ignored (a dilated kernel spans d (k - 1) + 1 pixels)",
         lambda n, k, s, p, d: (n + 2 * p - (k - 1) - 1) // s + 1),
        ("an off-by-one: the final + 1 (the first window) is missing",
         lambda n, k, s, p, d: (n + 2 * p - d * (k - 1) - 1) // s),
        ("padding counted on one side only (it is added at both ends: 2 p)",
         lambda n, k, s, p, d: (n + p - d * (k - 1) - 1) // s + 1),
        ("rounding up instead of down (a window must fit entirely)",
         lambda n, k, s, p, d: -(-(n + 2 * p - d * (k - 1) - 1) // s) + 1),
    ]
    return check_forward("01.1", fn, conv.conv_output_size, probes, mistakes)


def _conv_ref(x, w, stride, padding):
    return conv.conv2d_forward(x, w, None, stride=stride, padding=padding)[0]


@exercise("01.2", "conv2d_im2col",
          "conv2d(x, w, stride, padding) without bias as im2col + one matmul; x (N, C, H, W), w (O, C, kh, kw)")
def check_conv2d_im2col(fn):
    probes = [(_rng(6).standard_normal((2, 3, 6, 7)), _rng(7).standard_normal((3, 3, 3, 3)), 1, 1),
              (_rng(8).standard_normal((1, 2, 7, 5)), _rng(9).standard_normal((2, 2, 3, 2)), 2, 0)]
    mistakes = [
        ("a flipped kernel: that is the textbook convolution, conv2d (as torch's) is a cross-correlation",
         lambda x, w, s, p: _conv_ref(x, w[:, :, ::-1, ::-1].copy(), s, p)),
        ("a transposed weight index: w is (O, C, kh, kw), output channel first",
         lambda x, w, s, p: _conv_ref(x, w.transpose(1, 0, 2, 3).copy(), s, p)),
        ("kernel rows and columns transposed (w[..., i, j] is row i, column j)",
         lambda x, w, s, p: _conv_ref(x, w.transpose(0, 1, 3, 2).copy(), s, p)),
    ]
    return check_forward("01.2", fn, _conv_ref, probes, mistakes)


def _weight_grad_ref(x, dout, w_shape, stride, padding):
    _, cache = conv.conv2d_forward(x, np.zeros(w_shape), None, stride=stride, padding=padding)
    return conv.conv2d_backward(dout, cache, needs_input_grad=(False, True, False))[1]


@exercise("01.3", "conv2d_weight_grad",
          "dW of conv2d from x (N, C, H, W) and dout (N, O, Ho, Wo): dW = dY @ cols^T, summed over images")
def check_conv2d_weight_grad(fn):
    probes = []
    for seed, (N, C, H, W, O, k, s, p) in enumerate([(2, 3, 6, 6, 4, 3, 1, 1), (3, 2, 7, 5, 3, 3, 2, 1)]):
        x = _rng(20 + seed).standard_normal((N, C, H, W))
        Ho, Wo = conv.conv_output_size(H, k, s, p), conv.conv_output_size(W, k, s, p)
        probes.append((x, _rng(30 + seed).standard_normal((N, O, Ho, Wo)), (O, C, k, k), s, p))
    mistakes = [
        ("only the first image's gradient: the weight is shared by the batch, sum over all N images",
         lambda x, g, ws, s, p: _weight_grad_ref(x[:1], g[:1], ws, s, p)),
        ("the batch averaged instead of summed", lambda x, g, ws, s, p: _weight_grad_ref(x, g, ws, s, p) / len(x)),
        ("a flipped kernel (the gradient of a cross-correlation is not flipped)",
         lambda x, g, ws, s, p: _weight_grad_ref(x, g, ws, s, p)[:, :, ::-1, ::-1]),
    ]
    return check_forward("01.3", fn, _weight_grad_ref, probes, mistakes, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# chapter 02
# ------------------------------------------------------------------------------------------------


def smooth_l1_forward(input, target, beta=1.0):
    """Elementwise smooth L1 of d = input - target (no reduction). Cache: (d, beta)."""
    out, (d, _, beta, _) = losses.smooth_l1_loss_forward(input, target, beta=beta, reduction="none")
    return out, (d, beta)


def _smooth_l1_probe(seed, beta):
    r = _rng(seed)
    x, t = r.normal(0, 1.2 * beta + 0.3, (6, 4)), r.normal(0, 0.2, (6, 4))
    d = x - t
    near = np.abs(np.abs(d) - beta) < 1e-3      # keep finite differences off the kink
    x[near] += 0.01
    return [x, t], {"beta": beta}


@exercise("02.1", "smooth_l1_backward",
          "smooth L1's backward: from dout and cache (d, beta), d = input - target, return (dinput, dtarget)")
def check_smooth_l1_backward(fn):
    probes = [_smooth_l1_probe(40, 1 / 9), _smooth_l1_probe(41, 0.5), _smooth_l1_probe(42, 1.0)]

    def grad(d, beta, inner, outer):
        return np.where(np.abs(d) < beta, inner, outer)

    mistakes = [
        ("a sign error in dtarget: d = input - target, so dL/dtarget = -dL/dinput",
         lambda g, c: (g * grad(c[0], c[1], c[0] / c[1], np.sign(c[0])),) * 2),
        ("the 1/beta missing inside the band (d(0.5 d^2 / beta)/dd = d / beta)",
         lambda g, c: (g * grad(c[0], c[1], c[0], np.sign(c[0])), -g * grad(c[0], c[1], c[0], np.sign(c[0])))),
        ("the quadratic branch used everywhere: outside |d| < beta the gradient is sign(d)",
         lambda g, c: (g * c[0] / c[1], -g * c[0] / c[1])),
        ("a sign error (the gradient points along d, not against it)",
         lambda g, c: (-g * grad(c[0], c[1], c[0] / c[1], np.sign(c[0])),
                       g * grad(c[0], c[1], c[0] / c[1], np.sign(c[0])))),
    ]
    return check_backward("02.1", fn, smooth_l1_forward, probes, mistakes,
                          hint="0.5 d^2 / beta where |d| < beta, |d| - beta / 2 elsewhere.")


def _gn_ref(x, num_groups, eps=1e-5):
    return layers.group_norm_forward(x, None, None, num_groups=num_groups, eps=eps)[0]


def _gn_stats(xg, axis, ddof=0, eps=1e-5):
    return (xg - xg.mean(axis=axis, keepdims=True)) / np.sqrt(xg.var(axis=axis, ddof=ddof, keepdims=True) + eps)


@exercise("02.2", "group_norm_naive",
          "group norm without affine: x (N, C, H, W) -> normalised by the mean and variance of each (image, group)")
def check_group_norm(fn):
    r = _rng(50)
    probes = [((r.standard_normal((2, 6, 3, 4)) * r.uniform(0.2, 4, (1, 6, 1, 1)) + r.uniform(-3, 3, (1, 6, 1, 1))), 3),
              ((r.standard_normal((3, 8, 2, 5)) * r.uniform(0.2, 4, (1, 8, 1, 1)) + r.uniform(-3, 3, (1, 8, 1, 1))), 2)]

    def strided(x, G, eps=1e-5):
        N, C = x.shape[:2]
        xg = x.reshape(N, C // G, G, -1).transpose(0, 2, 1, 3).reshape(N, G, -1)
        return _gn_stats(xg, 2, eps=eps).reshape(N, G, C // G, -1).transpose(0, 2, 1, 3).reshape(x.shape)

    mistakes = [
        ("a transposed grouping: reshape(N, C/G, G, ...) puts channels c and c + G in one group; "
         "a group is C/G consecutive channels, reshape(N, G, -1)", strided),
        ("each channel normalised on its own (that is instance norm)",
         lambda x, G, eps=1e-5: _gn_stats(x.reshape(*x.shape[:2], -1), 2, eps=eps).reshape(x.shape)),
        ("the unbiased variance (ddof=1); group norm, as torch, uses the biased one",
         lambda x, G, eps=1e-5: _gn_stats(x.reshape(x.shape[0], G, -1), 2, ddof=1, eps=eps).reshape(x.shape)),
        ("statistics taken over the batch too: group norm never mixes images",
         lambda x, G, eps=1e-5: _gn_stats(x.reshape(x.shape[0], G, -1).transpose(1, 0, 2).reshape(G, -1), 1,
                                          eps=eps).reshape(G, x.shape[0], -1).transpose(1, 0, 2).reshape(x.shape)),
    ]
    return check_forward("02.2", fn, _gn_ref, probes, mistakes, rtol=1e-6, atol=1e-7)


def bce_forward(x, t):
    """Elementwise binary cross-entropy with logits (no reduction). Cache: (x, t)."""
    out, _ = losses.binary_cross_entropy_with_logits_forward(x, t, reduction="none")
    return out, (x, t)


@exercise("02.3", "bce_backward",
          "binary cross-entropy with logits, backward: from dout and cache (x, t) return (dx, dt)")
def check_bce_backward(fn):
    probes = [([_rng(s).normal(0, 3, (5, 4)), _rng(s + 1).uniform(0, 1, (5, 4))], {}) for s in (60, 62)]
    mistakes = [
        ("a sign error: dL/dx = sigmoid(x) - t", lambda g, c: (g * (c[1] - _sigmoid(c[0])), -g * c[0])),
        ("a sign error in dt: the loss holds -x t, so dL/dt = -x",
         lambda g, c: (g * (_sigmoid(c[0]) - c[1]), g * c[0])),
        ("dout missing from dx (chain rule)", lambda g, c: (_sigmoid(c[0]) - c[1], -g * c[0])),
    ]
    return check_backward("02.3", fn, bce_forward, probes, mistakes,
                          hint="loss = max(x, 0) - x t + log(1 + exp(-|x|)).")
