"""The first 20 iterations of the default training run give the same losses with engines on and off.

Default run: `python -m minimask.train` (the shapes preset: 128x128 images, batch 4, the small
ResNet-18-FPN, SGD with warmup), on 80 generated images. At every iteration the loss dict is computed
twice on the same weights, batch and sampling generator state: once on the reference code
(`fast.reference()`), forward and backward, and once with the engines, whose gradients then step the
optimiser as the training loop does. The losses and the whole gradient must agree.
Tolerances: the losses 1e-3 relative; the whole gradient (all parameters as one vector, the norm
of the difference over the reference's norm) 2e-2. The engines sum in another order (float32
rounding, ~1e-6 relative per op), and mostly the gradients agree to 1e-6. But a rounding can flip a
discrete choice: a mask target interpolated to exactly 0.5 (RoIAlign of a binary mask, then >= 0.5),
the last proposal kept by top-k or NMS, hence one sampled RoI. Each such flip moves the gradient by
up to ~6e-3 relative (measured with each engine alone over 11 iterations: conv up to 5.8e-3,
RoIAlign up to 3.3e-4, NMS exactly 0) while a loss moves by less than 1e-3. A wrong backward is off
by order 1.
"""

import math

import numpy as np
import pytest

from minimask import fast
from minimask.builders import TrainConfig, build_dataset, build_model, build_optimizer
from minimask.data import DataLoader
from minimask.optim import clip_grad_norm_


@pytest.mark.slow
def test_first_20_iterations_equal_with_and_without_engines(tmp_path):
    cfg = TrainConfig(data_dir=str(tmp_path / "data"), num_train_images=80, num_val_images=2)
    train_set = build_dataset(cfg, cfg.train_split)
    rng = np.random.default_rng([cfg.seed, 1])
    model = build_model(cfg, train_set.num_classes, rng)
    model.train()
    optimizer, scheduler = build_optimizer(cfg, model)
    batches = DataLoader(train_set, batch_size=cfg.batch_size, flip_prob=cfg.flip_prob, seed=cfg.seed,
                         num_workers=1).batches()
    params = model.parameters()
    for it in range(20):
        images, targets = next(batches)
        ref_rng = np.random.default_rng()
        ref_rng.bit_generator.state = rng.bit_generator.state    # the same sampling on both sides
        with fast.reference():
            ref_losses = model(images, targets, rng=ref_rng)
            optimizer.zero_grad()
            total(ref_losses).backward()
        ref = {k: float(v.data) for k, v in ref_losses.items()}
        ref_grads = [None if p.grad is None else p.grad.copy() for p in params]
        losses = model(images, targets, rng=rng)
        got = {k: float(v.data) for k, v in losses.items()}
        assert got.keys() == ref.keys()
        for k in got:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, err_msg=f"iteration {it + 1}, {k}")
        optimizer.zero_grad()
        total(losses).backward()
        assert [p.grad is None for p in params] == [g is None for g in ref_grads], f"iteration {it + 1}"
        got_flat = np.concatenate([p.grad.ravel() for p in params if p.grad is not None])
        ref_flat = np.concatenate([g.ravel() for g in ref_grads if g is not None])
        err = np.linalg.norm(got_flat - ref_flat) / np.linalg.norm(ref_flat)
        assert err <= 2e-2, f"iteration {it + 1}: the gradient differs by {err:.3g} (relative)"
        clip_grad_norm_(params, cfg.clip_grad_norm or math.inf)
        optimizer.step()
        scheduler.step()


def total(losses):
    loss = None
    for v in losses.values():
        loss = v if loss is None else loss + v
    return loss
