"""Mask head: module shapes, names and gradients; mask targets, the per-class sigmoid loss, inference
channel choice and pasting, each against a NumPy reference and (oracle) torchvision."""

import numpy as np
import pytest
from gradcheck import tape_gradcheck
from hypothesis import given
from hypothesis import strategies as st

from minimask import mask_head as MH
from minimask.config import RoIHeadsConfig
from minimask.roi_heads import RoIHeads
from minimask.tape import Tensor

SEEDS = st.integers(0, 2**16)


def bce64(x, t):
    """Binary cross-entropy with logits in float64, written as -t log s - (1-t) log(1-s)."""
    s = 1 / (1 + np.exp(-x))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s))


def test_modules_shapes_names_and_gradcheck():
    rng = np.random.default_rng(0)
    heads = MH.MaskRCNNHeads(3, layers=(4, 4), rng=rng)
    pred = MH.MaskRCNNPredictor(4, 5, num_classes=3, rng=rng)
    assert list(heads.state_dict()) == ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias"]
    assert list(pred.state_dict()) == ["conv5_mask.weight", "conv5_mask.bias", "mask_fcn_logits.weight",
                                       "mask_fcn_logits.bias"]
    x = rng.standard_normal((2, 3, 3, 3))
    labels = np.array([1, 2])
    targets = (rng.random((2, 6, 6)) > 0.5).astype(np.float64)
    params = heads.parameters() + pred.parameters()
    for p in params:  # random biases too: zero biases on relu-zeroed inputs would sit exactly on a kink
        p.data = rng.standard_normal(p.shape) * 0.5

    def loss():
        logits = pred(heads(Tensor(x)))
        assert logits.shape == (2, 3, 6, 6)                   # 2x upsampled, one map per class
        return MH.maskrcnn_loss(logits, labels, targets)

    tape_gradcheck(params, loss, max_checks=10)


def test_group_norm_variant_keys():
    heads = MH.MaskRCNNHeads(8, layers=(8,), norm="group_norm", rng=np.random.default_rng(0))
    assert list(heads.state_dict()) == ["0.0.weight", "0.1.weight", "0.1.bias"]    # conv has no bias


@given(seed=SEEDS, P=st.integers(0, 6), K=st.integers(2, 5))
def test_maskrcnn_loss_uses_gt_class_channel_only(seed, P, K):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((P, K, 4, 4)) * 3
    labels = rng.integers(1, K, P)
    targets = rng.random((P, 4, 4))
    x = Tensor(logits, requires_grad=True)
    loss = MH.maskrcnn_loss(x, labels, targets)
    loss.backward()
    if P == 0:
        assert float(loss.data) == 0.0 and x.grad.shape == logits.shape and not x.grad.any()
        return
    ref = np.mean([bce64(logits[p, labels[p]], targets[p]) for p in range(P)])
    np.testing.assert_allclose(float(loss.data), ref, rtol=1e-10)
    # only the gt class's channel receives gradient: the classes do not compete
    other = np.ones((P, K), bool)
    other[np.arange(P), labels] = False
    assert not x.grad[other].any() and x.grad[~other].any()


def test_project_masks_on_boxes_box_exactly_on_the_object():
    masks = np.zeros((2, 40, 50), np.uint8)
    masks[0, 10:30, 5:25] = 1                                  # a 20x20 square
    masks[1, :, 25:] = 1                                       # right half
    boxes = np.array([[5, 10, 25, 30], [0, 0, 50, 40], [5, 10, 15, 30]], np.float32)
    t = MH.project_masks_on_boxes(masks, boxes, np.array([0, 1, 0]), 8, aligned=True, binarize=True)
    assert t.shape == (3, 8, 8)
    assert (t[0] == 1).all()                                   # the box is the square
    assert (t[1][:, :4] == 0).all() and (t[1][:, 4:] == 1).all()   # half and half
    assert (t[2] == 1).all()                                   # left half of the square: all object
    soft = MH.project_masks_on_boxes(masks, boxes, np.array([0, 1, 0]), 8, aligned=False, binarize=False)
    # soft targets: averages of 0/1 samples, in [0, 1] up to float32 rounding
    assert ((soft >= -1e-6) & (soft <= 1 + 1e-6)).all() and set(np.unique(t)) <= {0.0, 1.0}


def test_paste_masks_fills_the_box():
    masks = np.ones((1, 1, 28, 28), np.float32)
    out = MH.paste_masks_in_image(masks, np.array([[10, 20, 50, 40]], np.float32), (60, 70))
    binary = out[0, 0] >= 0.5
    ys, xs = np.nonzero(binary)
    # a full mask pasted in a box covers the box (integer corners, torchvision's +1 convention)
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 40) <= 1 and abs(xs.min() - 10) <= 1 and abs(xs.max() - 50) <= 1
    assert MH.paste_masks_in_image(np.zeros((0, 1, 28, 28), np.float32), np.zeros((0, 4), np.float32),
                                   (5, 6)).shape == (0, 1, 5, 6)


def test_maskrcnn_inference_picks_predicted_class():
    logits = np.zeros((3, 4, 2, 2), np.float32)
    logits[0, 2] = 5.0
    logits[1, 1] = -5.0
    probs = MH.maskrcnn_inference(logits, [np.array([2, 1]), np.array([3])])
    assert [p.shape for p in probs] == [(2, 1, 2, 2), (1, 1, 2, 2)]
    np.testing.assert_allclose(probs[0][0], 1 / (1 + np.exp(-5.0)), rtol=1e-6)
    np.testing.assert_allclose(probs[0][1], 1 / (1 + np.exp(5.0)), rtol=1e-6)
    np.testing.assert_allclose(probs[1][0], 0.5)


@pytest.mark.oracle
def test_targets_loss_and_paste_match_torchvision(torch):
    from torchvision.models.detection import roi_heads as tvr

    rng = np.random.default_rng(3)
    G, H, W = 4, 120, 160
    masks = (rng.random((G, H, W)) > 0.6).astype(np.uint8)
    xy = rng.uniform(0, 100, (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (30, 2))], 1).astype(np.float32)
    idx = rng.integers(0, G, 30)
    ours = MH.project_masks_on_boxes(masks, boxes, idx, 28, aligned=False, binarize=False)
    theirs = tvr.project_masks_on_boxes(torch.from_numpy(masks), torch.from_numpy(boxes), torch.from_numpy(idx), 28)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6)   # float32 averages of the same samples

    K = 5
    logits = rng.standard_normal((30, K, 28, 28)).astype(np.float32)
    gl = rng.integers(1, K, G)
    tl = tvr.maskrcnn_loss(torch.from_numpy(logits), [torch.from_numpy(boxes)], [torch.from_numpy(masks)],
                           [torch.from_numpy(gl)], [torch.from_numpy(idx)])
    ml = MH.maskrcnn_loss(Tensor(logits), gl[idx], ours)
    np.testing.assert_allclose(float(ml.data), tl.item(), rtol=1e-5)

    probs = rng.random((30, 1, 28, 28)).astype(np.float32)
    pasted = MH.paste_masks_in_image(probs, boxes * 1.3 - 10, (H, W))
    ref = tvr.paste_masks_in_image(torch.from_numpy(probs), torch.from_numpy(boxes * 1.3 - 10), (H, W)).numpy()
    np.testing.assert_allclose(pasted, ref, atol=1e-6)


@pytest.mark.parametrize("cap", [0, 3])
def test_mask_batch_size_per_image_caps_the_mask_branch(cap):
    """Every positive trains the mask head (0, the paper), or a random `cap` of each image's positives."""
    rng = np.random.default_rng(0)
    cfg = RoIHeadsConfig(batch_size_per_image=32, mask_batch_size_per_image=cap, representation_size=16,
                         mask_layers=(4,), mask_predictor_channels=4)
    heads = RoIHeads(3, cfg, in_channels=4, rng=rng).train()
    features = {k: Tensor(rng.standard_normal((2, 4, 64 // 2**i, 64 // 2**i)).astype(np.float32))
                for i, k in enumerate("0123")}
    targets, proposals = [], []
    for _ in range(2):   # two objects per image; 40 proposals near them: many positives
        boxes = np.array([[8, 8, 40, 40], [30, 20, 60, 50]], np.float32)
        masks = np.zeros((2, 256, 256), np.uint8)
        masks[0, 8:40, 8:40] = masks[1, 20:50, 30:60] = 1
        targets.append({"boxes": boxes, "labels": np.array([1, 2]), "masks": masks})
        proposals.append((boxes[rng.integers(0, 2, 40)] + rng.uniform(-2, 2, (40, 4))).astype(np.float32))
    seen = []
    original = heads.mask_head.forward
    heads.mask_head.forward = lambda x: seen.append(x.shape[0]) or original(x)
    _, losses = heads(features, proposals, [(256, 256)] * 2, targets, rng=np.random.default_rng(1))
    positives = 2 * 8   # 32 RoIs per image at a quarter positive
    assert seen == [2 * cap if cap else positives]
    assert np.isfinite(float(losses["loss_mask"].data))
    with pytest.raises(ValueError, match="mask_batch_size_per_image"):
        RoIHeadsConfig(mask_batch_size_per_image=-1)
