"""RPN: head and losses (gradient check in float64), flattening order, proposals, torchvision parity."""

from collections import OrderedDict

import numpy as np
import pytest
from gradcheck import gradcheck
from hypothesis import given, settings
from hypothesis import strategies as st

from minimask.anchors import AnchorGenerator
from minimask.boxes import box_iou, decode_boxes
from minimask.layers import sigmoid_forward
from minimask.rpn import RegionProposalNetwork, RPNConfig, RPNHead, concat_box_prediction_layers, filter_proposals
from minimask.tape import Tensor, no_grad

BATCH = (2, 3, 64, 96)  # padded batch: strides 4..64 give the grids below
GRIDS = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
SIZES = [(64, 96), (50, 80)]  # the images before padding


def make_features(rng, n=2, c=4, grids=GRIDS, dtype=np.float64):
    return OrderedDict((str(i), Tensor(rng.normal(size=(n, c, h, w)).astype(dtype))) for i, (h, w) in enumerate(grids))


def make_targets():
    return [{"boxes": np.array([[10.0, 10, 40, 30], [50, 5, 90, 60], [20, 30, 28, 44]])},
            {"boxes": np.array([[0.0, 0, 60, 50], [5, 5, 30, 30]]), "iscrowd": np.array([0, 1])}]


def make_rpn(c=4, seed=0, dtype=np.float64, weight_std=0.3, **cfg):
    """An RPN whose head weights are large enough for scores and boxes to vary (std 0.01 is flat)."""
    rng = np.random.default_rng(seed)
    rpn = RegionProposalNetwork(RPNConfig(**cfg), in_channels=c, rng=rng)
    for p in rpn.parameters():
        p.data = (rng.normal(size=p.shape) * weight_std).astype(dtype)
    return rpn


def test_head_parameters_and_init():
    head = RPNHead(16, 3, rng=np.random.default_rng(0))
    shapes = {k: v.shape for k, v in head.state_dict().items()}
    assert shapes == {"conv.0.0.weight": (16, 16, 3, 3), "conv.0.0.bias": (16,), "cls_logits.weight": (3, 16, 1, 1),
                      "cls_logits.bias": (3,), "bbox_pred.weight": (12, 16, 1, 1), "bbox_pred.bias": (12,)}
    w = head.state_dict()["conv.0.0.weight"]
    assert w.dtype == np.float32 and abs(w.std() - 0.01) < 0.001  # normal(std=0.01), 2304 draws
    assert all(np.all(v == 0) for k, v in head.state_dict().items() if k.endswith("bias"))
    rpn = RegionProposalNetwork(in_channels=16, rng=np.random.default_rng(0))
    assert [k for k in rpn.state_dict()] == ["head." + k for k in shapes]


def test_flattening_follows_the_anchor_order():
    # give every head output the coordinates of its anchor and check they land on that anchor's row
    A, n = 3, 2
    gen = AnchorGenerator()
    anchors = gen(BATCH[2:], GRIDS, )
    logits, deltas, start = [], [], 0
    for (h, w), a in zip(GRIDS, gen.grid_anchors_per_level(BATCH[2:], GRIDS), strict=True):
        per_cell = a.reshape(h, w, A, 4)  # (H, W, A, 4) as laid out by the generator
        lg = np.broadcast_to(per_cell[None, ..., 0].transpose(0, 3, 1, 2), (n, A, h, w))  # x1 as the "logit"
        dl = np.broadcast_to(per_cell.transpose(2, 3, 0, 1).reshape(1, A * 4, h, w), (n, A * 4, h, w))
        logits.append(Tensor(np.ascontiguousarray(lg)))
        deltas.append(Tensor(np.ascontiguousarray(dl)))
        start += h * w * A
    obj, reg = concat_box_prediction_layers(logits, deltas)
    assert obj.shape == (n, len(anchors)) and reg.shape == (n, len(anchors), 4)
    for i in range(n):
        np.testing.assert_array_equal(obj.data[i], anchors[:, 0])
        np.testing.assert_array_equal(reg.data[i], anchors)


def test_flattening_adjoint():
    # concat_box_prediction_layers only moves numbers: <f(x), g> == <x, f^T(g)> through the tape
    rng = np.random.default_rng(0)
    logits = [Tensor(rng.normal(size=(2, 3, h, w)), requires_grad=True) for h, w in GRIDS]
    deltas = [Tensor(rng.normal(size=(2, 12, h, w)), requires_grad=True) for h, w in GRIDS]
    obj, reg = concat_box_prediction_layers(logits, deltas)
    g_obj, g_reg = rng.normal(size=obj.shape), rng.normal(size=reg.shape)
    ((obj * g_obj).sum() + (reg * g_reg).sum()).backward()
    lhs = float((obj.data * g_obj).sum() + (reg.data * g_reg).sum())
    rhs = sum(float((t.data * t.grad).sum()) for t in logits + deltas)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@settings(max_examples=4)
@given(n=st.integers(1, 2), c=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_gradcheck_head_and_losses(n, c, seed):
    """d(loss_objectness + loss_rpn_box_reg) / d(head parameters, features), float64."""
    rng = np.random.default_rng(seed)
    rpn = make_rpn(c=c, seed=seed, batch_size_per_image=64)
    feats = make_features(rng, n=n, c=c)
    targets = make_targets()[:n]
    params = rpn.parameters()
    k = len(params)

    def forward(*arrays):
        for p, a in zip(params, arrays[:k], strict=True):
            p.data = a
        ts = [Tensor(a, requires_grad=True) for a in arrays[k:]]
        # the same seed every call: the sampled anchors do not change between the finite differences
        _, losses = rpn(BATCH, ts, SIZES[:n], targets, rng=np.random.default_rng(1))
        total = losses["loss_objectness"] + losses["loss_rpn_box_reg"]
        return total.data, (total, ts)

    def backward(g, cache):
        total, ts = cache
        rpn.zero_grad()
        total.backward(np.asarray(g))
        return tuple(p.grad for p in params) + tuple(t.grad for t in ts)

    inputs = [p.data.copy() for p in params] + [f.data for f in feats.values()]
    # float64 central differences: ~1e-9 error; smooth L1 and ReLU kinks are too rare to be hit at eps 1e-6
    gradcheck(forward, backward, inputs, max_checks=6, atol=1e-7, rtol=1e-5)


def test_losses_by_hand():
    """Recompute both losses from the definitions with the same sampled anchors."""
    rng = np.random.default_rng(3)
    rpn = make_rpn(batch_size_per_image=32)
    feats = make_features(rng)
    targets = make_targets()
    _, losses = rpn(BATCH, feats, SIZES, targets, rng=np.random.default_rng(7))
    # replay: the same labels and the same draw
    anchors = rpn.anchor_generator(BATCH[2:], GRIDS).astype(np.float64)
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    pm, nm = rpn.fg_bg_sampler(labels, np.random.default_rng(7))
    logits, deltas = rpn.head(list(feats.values()))
    obj, reg = concat_box_prediction_layers(logits, deltas)
    bce, box, count = 0.0, 0.0, 0
    for i in range(2):
        for j in np.flatnonzero(pm[i] | nm[i]):
            x, y = obj.data[i, j], labels[i][j]
            bce += max(x, 0) - x * y + np.log1p(np.exp(-abs(x)))
            count += 1
        for j in np.flatnonzero(pm[i]):
            (gx1, gy1, gx2, gy2), (ax1, ay1, ax2, ay2) = matched[i][j], anchors[j]
            target = [((gx1 + gx2) - (ax1 + ax2)) / 2 / (ax2 - ax1), ((gy1 + gy2) - (ay1 + ay2)) / 2 / (ay2 - ay1),
                      np.log((gx2 - gx1) / (ax2 - ax1)), np.log((gy2 - gy1) / (ay2 - ay1))]
            d = reg.data[i, j] - np.array(target)
            beta = 1 / 9
            box += np.where(np.abs(d) < beta, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta).sum()
    assert pm[0].sum() > 0 and count > 0
    np.testing.assert_allclose(losses["loss_objectness"].item(), bce / count, rtol=1e-10)
    np.testing.assert_allclose(losses["loss_rpn_box_reg"].item(), box / count, rtol=1e-10)


def test_proposals_properties():
    rng = np.random.default_rng(1)
    rpn = make_rpn(pre_nms_top_n_test=100, post_nms_top_n_test=40).eval()
    feats = make_features(rng)
    with no_grad():
        props, losses = rpn(BATCH, feats, SIZES)
    assert losses == {}
    for p, (h, w) in zip(props, SIZES, strict=True):
        assert isinstance(p, np.ndarray)  # plain arrays: nothing to backpropagate through
        assert p.shape[1] == 4 and 0 < len(p) <= 40
        assert np.all((p[:, 0::2] >= 0) & (p[:, 0::2] <= w) & (p[:, 1::2] >= 0) & (p[:, 1::2] <= h))
        assert np.all(p[:, 2:] - p[:, :2] >= 1e-3)
    # filter_proposals itself: per level NMS, scores sorted, top-n per level before NMS
    n_per_level = [h * w * 3 for h, w in GRIDS]
    objectness = rng.normal(size=(1, sum(n_per_level)))
    anchors = rpn.anchor_generator(BATCH[2:], GRIDS).astype(np.float64)
    deltas = rng.normal(0, 0.2, (sum(n_per_level), 4))
    level_of = np.repeat(np.arange(5), n_per_level)
    boxes, scores = filter_proposals(lambda i, idx: decode_boxes(deltas[idx], anchors[idx]), objectness, [(64, 96)],
                                     n_per_level, 20, 1000, 0.7)
    b, s = boxes[0], scores[0]
    assert np.all(np.diff(s) <= 0)
    # which anchor each proposal came from: its score identifies it
    probs = sigmoid_forward(objectness[0])[0]
    src = [int(np.flatnonzero(probs == v)[0]) for v in s]
    lv = level_of[src]
    for level in range(5):
        picked = np.array(src)[lv == level]
        top = np.argsort(-objectness[0][level_of == level])[:20] + np.flatnonzero(level_of == level)[0]
        assert set(picked) <= set(top)  # only the level's 20 best logits get to NMS
        same = b[lv == level]
        iou = box_iou(same, same)
        assert not np.any(np.triu(iou, 1) > 0.7)  # NMS within the level


def test_training_edge_cases():
    rng = np.random.default_rng(2)
    rpn = make_rpn(dtype=np.float32)
    feats = make_features(rng, dtype=np.float32)
    # no ground truth at all, and only crowd boxes: negatives only, box loss exactly 0
    targets = [{"boxes": np.zeros((0, 4), np.float32)},
               {"boxes": np.array([[0, 0, 30, 30]], np.float32), "iscrowd": np.array([True])}]
    _, losses = rpn(BATCH, feats, SIZES, targets, rng=np.random.default_rng(0))
    assert losses["loss_rpn_box_reg"].item() == 0.0 and np.isfinite(losses["loss_objectness"].item())
    assert losses["loss_objectness"].dtype == np.float32
    (losses["loss_objectness"] + losses["loss_rpn_box_reg"]).backward()
    assert all(np.isfinite(p.grad).all() for p in rpn.parameters())
    with pytest.raises(ValueError, match="needs targets"):
        rpn(BATCH, feats, SIZES)
    with pytest.raises(ValueError, match="anchor levels"):
        rpn(BATCH, list(feats.values())[:4], SIZES, targets)


# ------------------------------------------------------------------------------------------------
# parity with torchvision's RegionProposalNetwork, float64, same features and head weights
# ------------------------------------------------------------------------------------------------


def torchvision_rpn(torch, ours, pre, post):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
    from torchvision.models.detection.rpn import RPNHead as TVRPNHead

    c = ours.head.cls_logits.weight.shape[1]
    tv = TVRPN(TVAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5), TVRPNHead(c, 3),
               fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
               pre_nms_top_n=dict(training=pre, testing=pre), post_nms_top_n=dict(training=post, testing=post),
               nms_thresh=0.7).double()
    tv.head.load_state_dict({k.removeprefix("head."): torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return tv


def tv_inputs(torch, feats):
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(BATCH, dtype=torch.float64), SIZES)
    return images, OrderedDict((k, torch.from_numpy(v.data)) for k, v in feats.items())


@pytest.mark.oracle
@pytest.mark.parametrize("pre,post", [(1000, 1000), (60, 25)])
def test_proposals_parity_with_torchvision(torch, pre, post):
    # 16 channels: a cell whose 3x3 conv output is all zero after the ReLU (all its scores then tie,
    # and the two sorts may order the tie differently) is a 2^-16 event, not a 1 in 16 one
    rng = np.random.default_rng(0)
    ours = make_rpn(c=16, pre_nms_top_n_test=pre, post_nms_top_n_test=post).eval()
    feats = make_features(rng, c=16)
    tv = torchvision_rpn(torch, ours, pre, post).eval()
    with torch.no_grad():
        want, _ = tv(*tv_inputs(torch, feats))
    with no_grad():
        got, _ = ours(BATCH, feats, SIZES)
    for g, w in zip(got, want, strict=True):
        # float64 on both sides, same order of operations up to the conv: 1e-9 px covers the rest
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-10, atol=1e-9)


@pytest.mark.oracle
def test_losses_and_gradients_parity_with_torchvision(torch):
    from minimask.matching import BalancedPositiveNegativeSampler

    rng = np.random.default_rng(1)
    ours = make_rpn(c=16)
    feats = make_features(rng, c=16)
    tv = torchvision_rpn(torch, ours, 2000, 2000).train()
    # torchvision's labels are float32, which makes torch compute the objectness BCE in float32;
    # hand it float64 labels so that both sides compare in float64
    assign = tv.assign_targets_to_anchors

    def float64_labels(anchors, targets):
        labels, matched = assign(anchors, targets)
        return [x.double() for x in labels], matched

    tv.assign_targets_to_anchors = float64_labels

    class SameDraw:
        """torchvision's sampler replaced by ours on the same seed: both losses see the same anchors."""

        def __init__(self, seed):
            self.rng, self.sampler = np.random.default_rng(seed), BalancedPositiveNegativeSampler(256, 0.5)

        def __call__(self, labels):
            pm, nm = self.sampler([lab.numpy() for lab in labels], self.rng)
            as_torch = lambda masks: [torch.from_numpy(m.astype(np.uint8)) for m in masks]  # noqa: E731
            return as_torch(pm), as_torch(nm)

    tv.fg_bg_sampler = SameDraw(5)
    targets = [{"boxes": t["boxes"]} for t in make_targets()]  # torchvision knows no crowd boxes
    images, tv_feats = tv_inputs(torch, feats)
    _, tv_losses = tv(images, tv_feats, [{"boxes": torch.from_numpy(t["boxes"])} for t in targets])
    _, losses = ours(BATCH, feats, SIZES, targets, rng=np.random.default_rng(5))
    for k in ("loss_objectness", "loss_rpn_box_reg"):
        np.testing.assert_allclose(losses[k].item(), tv_losses[k].item(), rtol=1e-10)
    (tv_losses["loss_objectness"] + tv_losses["loss_rpn_box_reg"]).backward()
    (losses["loss_objectness"] + losses["loss_rpn_box_reg"]).backward()
    tv_grads = {"head." + k: p.grad.numpy() for k, p in tv.head.named_parameters()}
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tv_grads[name], rtol=1e-8, atol=1e-12)
