"""Chapter 00 solutions: sigmoid's backward, scatter-add, a broadcast product's backward."""

import numpy as np


def sigmoid_backward(dout, cache):
    s = cache                                   # the forward cached its output s = sigmoid(x)
    return dout * s * (1 - s)                   # ds/dx = s (1 - s)


def scatter_add(target, idx, values):
    out = np.array(target, dtype=np.float64, copy=True)
    np.add.at(out, idx, values)                 # every occurrence of a repeated index adds
    return out


def broadcast_mul_backward(dout, cache):
    a, b = cache                                # y = a * b, a (N, C), b (C,) broadcast over rows
    return dout * b, (dout * a).sum(axis=0)     # b was read by every row: sum their gradients
