"""The three losses Mask R-CNN trains with, each a forward/backward pair on the tape.

    cross_entropy                       box-head classification     (R, K) logits, (R,) int labels
    binary_cross_entropy_with_logits    RPN objectness, mask head   logits and {0,1} (or soft) targets
    smooth_l1_loss                      RPN and box-head regression (P, 4) deltas vs target deltas

Names and signatures are torch.nn.functional's, so every value can be cross-checked against torch.
reduction: "mean" | "sum" | "none". A mean over zero elements (every row ignored, no positive
anchor) is 0 with a zero gradient here; torch returns NaN. A loss term with nothing to learn from
should add nothing to the total, not poison it.
Stability: softmax through log-sum-exp with the row max subtracted; BCE as
max(x, 0) - x t + log1p(exp(-|x|)), finite for any finite logit.
Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import numpy as np

from . import tape
from .backend import get_array_module, to_host

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


class NonFiniteError(ValueError):
    """A loss got NaN or infinite input (the training loop turns it into NonFiniteLoss)."""


def _check_finite(name, x):
    # One host sync per loss call (not per element): cheap next to the forward pass, and a NaN
    # logit caught here names its source instead of surfacing later as a NaN total loss.
    xp = get_array_module(x)
    if xp is not np:  # on a device a sync per loss; the training loop checks the loss values it logs
        return
    if not bool(xp.isfinite(x).all()):
        bad = int((~xp.isfinite(x)).sum())
        raise NonFiniteError(f"{name}: {bad} non-finite value(s) in input of shape {tuple(x.shape)}")


def _broadcasts_to(shape, target):
    """True when an array of `shape` broadcasts to exactly `target` (numpy rules)."""
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1], strict=False))


def _denominator(count):
    """max(count, 1) for the mean: a Python int stays one (a NumPy int64 would upcast float32 to
    float64); a 0-d float array of the loss's dtype (cross-entropy's valid-row count) stays on device."""
    return max(count, 1) if isinstance(count, int) else get_array_module(count).maximum(count, 1)


def _reduce(loss, reduction, count):
    """Sum, mean over `count` elements (0 elements -> 0), or no reduction."""
    xp = get_array_module(loss)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "mean":
        total = total / _denominator(count)
    return xp.asarray(total)                                     # 0-d array, not a NumPy scalar


def _grad_scale(dout, reduction, count, shape):
    """d(reduced)/d(loss) broadcast to the unreduced `shape`."""
    xp = get_array_module(dout)
    if reduction == "none":
        return dout
    if reduction == "sum":
        return xp.broadcast_to(dout, shape)
    return xp.broadcast_to(dout / _denominator(count), shape)


# --- cross entropy ----------------------------------------------------------------------------


def cross_entropy_forward(input, target, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy. input (N, K) logits, target (N,) int labels in [0, K) or ignore_index.

    loss_i = logsumexp(input_i) - input_i[target_i]; rows with target == ignore_index give 0 and
    leave the mean's denominator (the number of valid rows). Returns a 0-d array, or (N,) for "none".
    Chapter: nbs/02_layers_and_losses.ipynb
    """
    _check_reduction(reduction)
    xp = get_array_module(input, target)
    if input.ndim != 2 or target.ndim != 1 or input.shape[0] != target.shape[0]:
        raise ValueError(
            f"cross_entropy: expected input (N, K) and target (N,), got {tuple(input.shape)} and "
            f"{tuple(target.shape)}"
        )
    if target.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: target must hold integer class indices, got dtype {target.dtype}")
    _check_finite("cross_entropy", input)
    N, K = input.shape
    valid = target != ignore_index                               # (N,) bool
    out_of_range = valid & ((target < 0) | (target >= K))
    if xp is np and bool(out_of_range.any()):  # checked on the host only (a device sync otherwise)
        bad = np.unique(to_host(target)[to_host(out_of_range)])
        raise ValueError(
            f"cross_entropy: labels {bad[:10].tolist()} outside [0, {K}) for input {tuple(input.shape)} "
            f"(ignore_index={ignore_index})"
        )
    z = input - input.max(axis=1, keepdims=True)                 # (N, K), max 0 per row
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))      # (N, K) log-softmax
    safe_t = xp.where(valid, target, 0)                          # (N,) any class for ignored rows
    rows = xp.arange(N)
    nll = -logp[rows, safe_t] * valid.astype(input.dtype)        # (N,)
    count = valid.sum().astype(input.dtype)                      # 0-d, number of valid rows
    return _reduce(nll, reduction, count), (logp, safe_t, valid, count, reduction)


def cross_entropy_backward(dout, cache):
    logp, safe_t, valid, count, reduction = cache
    xp = get_array_module(logp)
    # forward was: nll_i = -(z_i[t_i] - log sum_k exp z_ik), kept only for valid rows
    # d nll_i / d input_ik = softmax_ik - [k == t_i]
    g = xp.exp(logp)                                             # (N, K) softmax
    g[xp.arange(g.shape[0]), safe_t] -= 1.0
    g *= valid[:, None]
    scale = _grad_scale(dout, reduction, count, (g.shape[0],))   # (N,)
    return g * scale[:, None], None


cross_entropy = tape.op(cross_entropy_forward, cross_entropy_backward)


# --- binary cross entropy with logits ---------------------------------------------------------


def binary_cross_entropy_with_logits_forward(input, target, weight=None, reduction="mean"):
    """Sigmoid + binary cross-entropy in one stable step. input and target of the same shape.

    loss = weight * (max(x, 0) - x t + log1p(exp(-|x|))), which equals -t log s(x) - (1-t) log(1-s(x))
    without ever forming s(x) or log(0). target may be soft (in [0, 1]) and of any numeric dtype;
    weight (optional) broadcasts to input. "mean" divides by input.size, as torch does.
    Chapter: nbs/02_layers_and_losses.ipynb
    """
    _check_reduction(reduction)
    xp = get_array_module(input, target)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(
            f"binary_cross_entropy_with_logits: input {tuple(input.shape)} and target "
            f"{tuple(target.shape)} must have the same shape"
        )
    if weight is not None and not _broadcasts_to(weight.shape, input.shape):
        raise ValueError(
            f"binary_cross_entropy_with_logits: weight {tuple(weight.shape)} does not broadcast to "
            f"input {tuple(input.shape)}"
        )
    _check_finite("binary_cross_entropy_with_logits", input)
    t = target.astype(input.dtype, copy=False)                   # uint8 masks, bool labels -> float
    e = xp.exp(-xp.abs(input))                                   # in (0, 1]: never overflows
    loss = xp.maximum(input, 0) - input * t + xp.log1p(e)
    if weight is not None:
        weight = weight.astype(input.dtype, copy=False)
        loss = loss * weight
    return _reduce(loss, reduction, input.size), (input, t, e, weight, reduction)


def binary_cross_entropy_with_logits_backward(dout, cache):
    x, t, e, weight, reduction = cache
    xp = get_array_module(x)
    # forward was: w (max(x,0) - x t + log1p(exp(-|x|)));  d/dx = w (sigmoid(x) - t),  d/dt = -w x
    # q = sigmoid(-|x|) = e / (1 + e) from e = exp(-|x|): no exp of a large number. Then
    # sigmoid(x) - t = (1 - t) - q for x >= 0 and q - t for x < 0, which keeps the tiny gradient
    # of a confidently right logit (e.g. -1e-13 at x = 30, t = 1) instead of rounding 1 - q to 1.
    q = e / (1.0 + e)
    scale = _grad_scale(dout, reduction, x.size, x.shape)
    if weight is not None:
        scale = scale * weight
    dx = xp.where(x >= 0, (1.0 - t) - q, q - t)
    return dx * scale, -x * scale, None


binary_cross_entropy_with_logits = tape.op(
    binary_cross_entropy_with_logits_forward, binary_cross_entropy_with_logits_backward
)


# --- smooth L1 --------------------------------------------------------------------------------


def smooth_l1_loss_forward(input, target, beta=1.0, reduction="mean"):
    """Huber-like box regression loss of d = input - target, elementwise (same shapes).

    0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere; beta = 0 is exactly L1 (|d|).
    torchvision uses beta = 1/9 for the RPN and box head. "mean" divides by input.size.
    Chapter: nbs/02_layers_and_losses.ipynb
    """
    _check_reduction(reduction)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(
            f"smooth_l1_loss: input {tuple(input.shape)} and target {tuple(target.shape)} must have "
            "the same shape"
        )
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    _check_finite("smooth_l1_loss", input)
    xp = get_array_module(input, target)
    d = input - target.astype(input.dtype, copy=False)
    ad = xp.abs(d)
    if beta == 0:                                                # L1; no 0/0 in an unused branch
        small = xp.zeros(d.shape, dtype=bool)
        loss = ad
    else:
        small = ad < beta
        loss = xp.where(small, 0.5 * d * d / beta, ad - 0.5 * beta)
    return _reduce(loss, reduction, input.size), (d, small, beta, reduction)


def smooth_l1_loss_backward(dout, cache):
    d, small, beta, reduction = cache
    xp = get_array_module(d)
    # forward was: 0.5 d^2 / beta inside the band, |d| - beta/2 outside (beta = 0: |d| everywhere)
    local = xp.sign(d) if beta == 0 else xp.where(small, d / beta, xp.sign(d))
    g = local * _grad_scale(dout, reduction, d.size, d.shape)
    return g, -g                                                 # d = input - target


smooth_l1_loss = tape.op(smooth_l1_loss_forward, smooth_l1_loss_backward)
