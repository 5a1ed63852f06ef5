"""The whole model: configuration, torchvision state-dict names, the training and eval interfaces,
gradients of the summed loss reaching every stage (float64 check on a tiny model), edge-case
targets, bad-target errors, and an overfit run on two synthetic images."""

import dataclasses
import inspect

import numpy as np
import pytest
from gradcheck import gradcheck

from minimask import config as C
from minimask import model as Mdl
from minimask.optim import SGD, clip_grad_norm_
from minimask.shapes import ShapesConfig, render_image

LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def tiny_model(seed=0, **overrides):
    """ResNet-18-FPN, 32 channels, 64 px images: seconds per step, every stage present."""
    opts = dict(min_size=64, max_size=64, width=32)
    opts.update(overrides)
    return Mdl.maskrcnn_small(num_classes=4, rng=np.random.default_rng(seed), **opts)


def shapes_sample(seed, size=64):
    """One synthetic image (3, size, size) in [0, 1] and its target, straight from the renderer."""
    rng = np.random.default_rng(seed)
    img, instances = render_image(rng, ShapesConfig(image_size=size, min_size=14, max_size=36, max_shapes=3))
    masks = np.stack([m for _, m in instances]).astype(np.uint8) if instances else np.zeros((0, size, size), np.uint8)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    target = {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
              "labels": np.array([c for c, _ in instances], np.int64),
              "masks": masks, "iscrowd": np.zeros(len(instances), bool)}
    return img.transpose(2, 0, 1).astype(np.float32) / 255, target


# --- configuration ------------------------------------------------------------------------------


def test_every_config_field_has_a_comment_and_overrides_route():
    for cls in (C.TransformConfig, C.BackboneConfig, C.RoIHeadsConfig, C.MaskRCNNConfig):
        src = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"
    cfg = C.with_overrides(C.MaskRCNNConfig(), min_size=512, aligned=False, num_classes=5)
    assert cfg.transform.min_size == 512 and cfg.roi_heads.aligned is False and cfg.num_classes == 5
    assert C.MaskRCNNConfig().roi_heads.box_loss_beta == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="unknown configuration field"):
        C.with_overrides(C.MaskRCNNConfig(), no_such_field=1)
    parity = C.torchvision_parity(C.MaskRCNNConfig())
    assert parity.roi_heads.aligned is False and parity.roi_heads.mask_target_binarize is False


@pytest.mark.oracle
def test_state_dict_keys_and_shapes_equal_torchvision(torch):
    import torchvision

    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ref = {k: tuple(v.shape) for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = {k: tuple(np.shape(v)) for k, v in Mdl.maskrcnn_resnet50_fpn(rng=np.random.default_rng(0))
            .state_dict().items()}
    assert set(ours) == set(ref), (sorted(set(ours) - set(ref))[:5], sorted(set(ref) - set(ours))[:5])
    assert ours == ref


# --- interfaces ---------------------------------------------------------------------------------


def test_train_losses_and_backward_reach_every_parameter():
    model = tiny_model()
    images, targets = zip(*[shapes_sample(1), shapes_sample(2)], strict=True)
    model.train()
    losses = model(list(images), list(targets), rng=np.random.default_rng(0))
    assert set(losses) == LOSS_NAMES
    for name, v in losses.items():
        assert v.shape == () and np.isfinite(float(v.data)), name
    total = sum(losses.values(), start=losses["loss_mask"] * 0.0)
    total.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None or not np.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(np.abs(p.grad).sum() > 0 for n, p in params if n.startswith(("rpn.", "roi_heads.")))


def test_eval_output_format():
    model = tiny_model(roi_heads={"score_thresh": 0.0})
    model.eval()
    img = np.random.default_rng(0).random((3, 50, 70), dtype=np.float32)
    out = model([img, img[:, :40, :30]])
    assert len(out) == 2
    for r, (h, w) in zip(out, [(50, 70), (40, 30)], strict=True):
        D = len(r["boxes"])
        assert 0 < D <= 100
        assert r["boxes"].shape == (D, 4) and r["scores"].shape == (D,) and r["labels"].shape == (D,)
        assert r["masks"].shape == (D, 1, h, w) and r["masks"].dtype == np.float32
        assert (r["masks"] >= 0).all() and (r["masks"] <= 1).all()
        assert (r["boxes"][:, 0::2] <= w + 1e-3).all() and (r["boxes"][:, 1::2] <= h + 1e-3).all()
        assert (np.diff(r["scores"]) <= 0).all() and ((r["labels"] >= 1) & (r["labels"] < 4)).all()


@pytest.mark.parametrize("case", ["empty", "single", "crowd_only"])
def test_edge_case_targets_train_without_nan(case):
    model = tiny_model()
    img, t = shapes_sample(5)
    if case == "empty":
        t = {k: v[:0] for k, v in t.items()}
    elif case == "single":
        t = {k: v[:1] for k, v in t.items()}
    else:
        t = dict(t, iscrowd=np.ones(len(t["boxes"]), bool))
    model.train()
    losses = model([img], [t], rng=np.random.default_rng(0))
    total = sum(losses.values(), start=losses["loss_mask"] * 0.0)
    assert np.isfinite(float(total.data))
    total.backward()
    assert all(p.grad is None or np.isfinite(p.grad).all() for p in model.parameters())
    if case != "single":   # nothing to regress or segment: those terms are exactly 0
        assert float(losses["loss_box_reg"].data) == 0 and float(losses["loss_mask"].data) == 0


@pytest.mark.parametrize("field, change", [
    ("boxes", lambda t: t["boxes"].__setitem__((0, 2), 500.0)),
    ("masks", lambda t: t.__setitem__("masks", t["masks"][:, :-3])),
    ("labels", lambda t: t["labels"].__setitem__(0, 9)),
])
def test_bad_targets_raise_naming_the_field(field, change):
    model = tiny_model()
    img, t = shapes_sample(3)
    change(t)
    model.train()
    with pytest.raises(ValueError, match=rf"targets\[0\]\['{field}'\]"):
        model([img], [t])


# --- gradients ----------------------------------------------------------------------------------


def test_summed_loss_gradcheck_every_stage():
    """Central differences (float64) of the total loss w.r.t. a few entries of one parameter per
    stage. Proposals are fixed (they are outside the tape by design), so the loss is a smooth
    function of the parameters away from ReLU kinks."""
    model = tiny_model(seed=1, min_size=32, max_size=32, width=16)
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    for m in model.modules():
        for k in list(m._buffers):
            m._buffers[k] = m._buffers[k].astype(np.float64)
    img, t = shapes_sample(7, size=32)
    img = img.astype(np.float64)
    model.train()
    # proposals: jittered gt boxes and a few random ones, fixed for every evaluation
    rng = np.random.default_rng(0)
    props = np.concatenate([t["boxes"] + rng.normal(0, 2, t["boxes"].shape), [[2, 2, 20, 20], [10, 5, 30, 28]]])
    props = [np.clip(props, 0, 32)]
    names = ["backbone.body.layer1.0.conv1.weight", "backbone.body.layer4.1.bn2.weight",
             "backbone.fpn.layer_blocks.0.0.weight", "rpn.head.conv.0.0.weight", "rpn.head.bbox_pred.bias",
             "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.bbox_pred.weight",
             "roi_heads.mask_head.0.0.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"]
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    assert not missing, missing
    params = [named[n] for n in names]

    def forward(*arrays):
        for p, a in zip(params, arrays, strict=True):
            p.data = a
        losses = model([img], [t], rng=np.random.default_rng(0), proposals=props)
        total = sum(losses.values(), start=losses["loss_mask"] * 0.0)
        return total.data, total

    def backward(g, total):
        model.zero_grad()
        total.backward(np.asarray(g))
        return tuple(p.grad for p in params)

    # float64 central differences through the whole model: ~1e-9 error; 1e-6 abs + 1e-4 rel covers
    # sums over thousands of terms
    gradcheck(forward, backward, [np.array(p.data) for p in params], max_checks=3, atol=1e-6, rtol=1e-4)
    _, total = forward(*[p.data for p in params])
    grads = backward(np.ones(()), total)
    assert all(np.abs(g).max() > 1e-8 for g in grads)   # not a vacuous 0 == 0 check


# --- overfitting ----------------------------------------------------------------------------------


def test_overfit_two_images():
    """A tiny model from scratch memorises two synthetic images: the total loss falls by >= 90%.
    SGD with momentum, a 10-step linear warmup and gradient clipping (no pretrained weights, so the
    first steps would otherwise blow up); bounded at 150 steps (it needs about 70)."""
    model = tiny_model(seed=0, min_size=64, max_size=64, width=32)
    data = [shapes_sample(11), shapes_sample(12)]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = SGD(params, lr=0.02, momentum=0.9)
    first = None
    for step in range(150):
        losses = model(images, targets, rng=np.random.default_rng(step))
        total = sum(losses.values(), start=losses["loss_mask"] * 0.0)
        value = float(total.data)
        assert np.isfinite(value), f"loss became {value} at step {step}"
        first = value if first is None else first
        if value < 0.1 * first:
            break
        opt.zero_grad()
        total.backward()
        opt.param_groups[0]["lr"] = 0.02 * min(1.0, (step + 1) / 10)
        clip_grad_norm_(params, 5.0)
        opt.step()
    assert value < 0.1 * first, f"total loss {first:.3f} -> {value:.3f} after {step + 1} steps"
