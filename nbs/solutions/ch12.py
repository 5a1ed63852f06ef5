"""Chapter 12 solutions: the learning-rate schedule, one SGD step, gradient clipping."""

import numpy as np


def lr_at(iteration, base_lr, milestones, gamma, warmup_iters, warmup_factor):
    factor = 1.0
    if iteration < warmup_iters:                                    # linear warmup
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    passed = sum(1 for m in milestones if m <= iteration)           # drops AT each milestone
    return base_lr * factor * gamma ** passed


def sgd_step(param, grad, buf, lr, momentum, weight_decay):
    d = grad + weight_decay * param                                 # weight decay joins the gradient
    buf = d.copy() if buf is None else momentum * buf + d           # torch: buf = d on the first step
    return param - lr * buf, buf


def clip_grad_norm(grads, max_norm):
    total = float(np.sqrt(sum((g * g).sum() for g in grads)))      # one norm over all gradients
    coef = min(1.0, max_norm / (total + 1e-6))
    return [g * coef for g in grads], total
