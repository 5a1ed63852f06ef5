"""Chapter 09 solutions: the per-class delta gather, the box loss, cross-entropy's backward."""

import numpy as np


def deltas_for_class(box_regression, labels):
    R = len(labels)
    return box_regression.reshape(R, -1, 4)[np.arange(R), labels]          # (R, K, 4) -> own class


def fastrcnn_box_loss(box_regression, labels, regression_targets, beta):
    pos = labels > 0                                                        # background has no box
    d = deltas_for_class(box_regression, labels)[pos] - regression_targets[pos]
    ad = np.abs(d)
    per = np.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
    return float(per.sum() / max(len(labels), 1))                           # / all sampled RoIs


def cross_entropy_backward(dout, cache):
    logits, labels = cache
    N, K = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)                    # softmax
    p[np.arange(N), labels] -= 1.0                                          # softmax - onehot
    return dout * p / N                                                     # the mean over N rows
