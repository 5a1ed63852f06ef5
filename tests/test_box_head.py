"""Box head: RoI matching and sampling invariants, the Fast R-CNN losses (float64 gradient checks and
a NumPy reference), the head modules' gradients, post-processing, and parity with torchvision."""

import numpy as np
import pytest
from gradcheck import tape_gradcheck
from hypothesis import given
from hypothesis import strategies as st

from minimask import box_head as B
from minimask.boxes import BoxCoder, box_iou
from minimask.matching import BalancedPositiveNegativeSampler, Matcher
from minimask.tape import Tensor

SEEDS = st.integers(0, 2**16)


def random_boxes(rng, n, size=100.0, min_wh=2.0):
    xy = rng.uniform(0, size * 0.7, (n, 2))
    wh = rng.uniform(min_wh, size * 0.3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# --- matching and sampling ----------------------------------------------------------------------


@given(seed=SEEDS, G=st.integers(0, 5), R=st.integers(1, 40))
def test_assign_targets_follow_iou(seed, G, R):
    rng = np.random.default_rng(seed)
    props, gt = random_boxes(rng, R), random_boxes(rng, G)
    gl = rng.integers(1, 7, G)
    matched, labels = B.assign_targets_to_proposals(props, gt, gl, Matcher(0.5, 0.5))
    assert matched.shape == labels.shape == (R,)
    if G == 0:
        assert (labels == 0).all()
        return
    iou = box_iou(gt, props)                                   # (G, R)
    best = iou.max(axis=0)
    assert ((labels > 0) == (best >= 0.5)).all()               # fg iff IoU >= 0.5, else background
    fg = labels > 0
    assert (iou[matched[fg], np.nonzero(fg)[0]] == best[fg]).all()   # matched to its best gt
    assert (labels[fg] == gl[matched[fg]]).all()


def test_crowd_overlaps_are_ignored_not_negative():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    crowd = np.array([[50, 50, 90, 90]], np.float32)
    props = np.array([[0, 0, 10, 10], [55, 55, 80, 80], [200, 200, 220, 220], [85, 85, 120, 120]], np.float32)
    _, labels = B.assign_targets_to_proposals(props, gt, np.array([3]), Matcher(0.5, 0.5), crowd, 0.7)
    # inside the crowd box -> ignored (-1); far away -> negative; mostly outside the crowd -> negative
    assert labels.tolist() == [3, -1, 0, 0]


@given(seed=SEEDS, G=st.integers(0, 6), R=st.integers(0, 300))
def test_select_training_samples(seed, G, R):
    rng = np.random.default_rng(seed)
    props, gt = random_boxes(rng, R), random_boxes(rng, G)
    gl = rng.integers(1, 5, G).astype(np.int64)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    p, m, lab, t = B.select_training_samples([props], [gt], [gl], Matcher(0.5, 0.5), sampler, coder, rng)
    p, m, lab, t = p[0], m[0], lab[0], t[0]
    assert len(p) <= 64 and (lab > 0).sum() <= 16 and (lab >= 0).all()
    if G:
        assert (lab > 0).sum() >= min(G, 16) or (lab > 0).sum() == 16   # every gt box is its own positive
        fg = lab > 0
        # decode(encode(gt, proposal), proposal) == gt for the positives
        dec = coder.decode_single(t[fg], p[fg])
        np.testing.assert_allclose(dec, gt[m[fg]], rtol=1e-4, atol=1e-3)
    else:
        assert (lab == 0).all() and (t == 0).all()


# --- losses -------------------------------------------------------------------------------------


def fastrcnn_loss_reference(logits, deltas, labels, targets, beta):
    """Written differently from the package: loop over RoIs in float64."""
    R, K = logits.shape
    ce = 0.0
    box = 0.0
    for r in range(R):
        z = logits[r] - logits[r].max()
        ce += np.log(np.exp(z).sum()) - z[labels[r]]
        if labels[r] > 0:
            d = deltas[r, 4 * labels[r]: 4 * labels[r] + 4] - targets[r]
            a = np.abs(d)
            box += np.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta).sum()
    return ce / R, box / R


@given(seed=SEEDS, R=st.integers(1, 12), K=st.integers(2, 5), beta=st.sampled_from([1 / 9, 0.5, 1.0]))
def test_fastrcnn_loss_matches_reference_and_gradcheck(seed, R, K, beta):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((R, K))
    deltas = rng.standard_normal((R, 4 * K))
    labels = rng.integers(0, K, R)
    targets = rng.standard_normal((R, 4))
    cls, box = B.fastrcnn_loss(Tensor(logits), Tensor(deltas), [labels], [targets], beta=beta)
    ref_cls, ref_box = fastrcnn_loss_reference(logits, deltas, labels, targets, beta)
    # float64 throughout: agreement to rounding
    np.testing.assert_allclose([float(cls.data), float(box.data)], [ref_cls, ref_box], rtol=1e-10, atol=1e-12)

    # gradient through the tape w.r.t. both logits and deltas
    x = Tensor(logits.copy(), requires_grad=True)
    d = Tensor(deltas.copy(), requires_grad=True)

    def loss():
        c, b = B.fastrcnn_loss(x, d, [labels], [targets], beta=beta)
        return c + b

    tape_gradcheck([x, d], loss)


def test_box_loss_uses_own_class_only_and_no_positives_gives_zero():
    logits = np.zeros((3, 4))
    deltas = np.zeros((3, 16))
    deltas[0, 4:8] = 5.0                                       # class 1's deltas of RoI 0 (a positive)
    deltas[1, 8:12] = 100.0                                    # another class's deltas: must not count
    labels = np.array([1, 0, 0])
    targets = np.zeros((3, 4))
    _, box = B.fastrcnn_loss(Tensor(logits), Tensor(deltas), [labels], [targets], beta=1.0)
    assert float(box.data) == pytest.approx(4 * (5.0 - 0.5) / 3)
    _, box = B.fastrcnn_loss(Tensor(logits), Tensor(deltas), [np.zeros(3, np.int64)], [targets])
    assert float(box.data) == 0.0


# --- modules ------------------------------------------------------------------------------------


def test_heads_shapes_names_and_gradcheck():
    rng = np.random.default_rng(0)
    head = B.TwoMLPHead(3 * 2 * 2, 8, rng=rng)
    pred = B.FastRCNNPredictor(8, 3, rng=rng)
    keys = list(head.state_dict()) + list(pred.state_dict())
    assert keys == ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias", "cls_score.weight", "cls_score.bias",
                    "bbox_pred.weight", "bbox_pred.bias"]
    x = rng.standard_normal((5, 3, 2, 2))
    labels = np.array([0, 1, 2, 2, 0])
    targets = rng.standard_normal((5, 4))
    params = head.parameters() + pred.parameters()
    for p in params:
        p.data = p.data.astype(np.float64)

    def loss():
        c, d = pred(head(Tensor(x)))
        assert c.shape == (5, 3) and d.shape == (5, 12)
        lc, lb = B.fastrcnn_loss(c, d, [labels], [targets])
        return lc + lb

    tape_gradcheck(params, loss)


# --- post-processing ----------------------------------------------------------------------------


def test_postprocess_detections_invariants():
    rng = np.random.default_rng(1)
    R, K = 50, 4
    props = [random_boxes(rng, 30, 200), random_boxes(rng, 20, 200)]
    logits = rng.standard_normal((R, K)).astype(np.float32) * 3
    deltas = rng.standard_normal((R, 4 * K)).astype(np.float32)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes, scores, labels = B.postprocess_detections(logits, deltas, props, [(150, 180), (200, 120)], coder,
                                                     score_thresh=0.2, nms_thresh=0.5, detections_per_img=15)
    for b, s, lab, (h, w) in zip(boxes, scores, labels, [(150, 180), (200, 120)], strict=True):
        assert len(b) <= 15 and (s > 0.2).all() and (np.diff(s) <= 0).all()
        assert ((lab >= 1) & (lab < K)).all()
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()
        for c in np.unique(lab):                                # NMS: no same-class pair above 0.5
            iou = box_iou(b[lab == c], b[lab == c])
            np.fill_diagonal(iou, 0)
            assert (iou <= 0.5 + 1e-6).all()


@pytest.mark.oracle
def test_postprocess_and_loss_match_torchvision(torch):
    from torchvision.models.detection import roi_heads as tvr

    rng = np.random.default_rng(2)
    R, K = 60, 6
    props = [random_boxes(rng, 40, 300), random_boxes(rng, 20, 300)]
    logits = (rng.standard_normal((R, K)) * 2).astype(np.float32)
    deltas = rng.standard_normal((R, 4 * K)).astype(np.float32)
    shapes = [(250, 280), (300, 200)]
    heads = tvr.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    tb, ts, tl = heads.postprocess_detections(torch.from_numpy(logits), torch.from_numpy(deltas),
                                              [torch.from_numpy(p) for p in props], shapes)
    mb, ms, ml = B.postprocess_detections(logits, deltas, props, shapes, BoxCoder((10.0, 10.0, 5.0, 5.0)))
    for i in range(2):
        # float32 on both sides, same formulas: boxes to ~1e-5 relative; the order is the same
        np.testing.assert_allclose(mb[i], tb[i].numpy(), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(ms[i], ts[i].numpy(), rtol=1e-5, atol=1e-7)
        assert (ml[i] == tl[i].numpy()).all()
    labels = rng.integers(0, K, R)
    targets = rng.standard_normal((R, 4)).astype(np.float32)
    tc, tbx = tvr.fastrcnn_loss(torch.from_numpy(logits), torch.from_numpy(deltas), [torch.from_numpy(labels)],
                                [torch.from_numpy(targets)])
    mc, mbx = B.fastrcnn_loss(Tensor(logits), Tensor(deltas), [labels], [targets])
    np.testing.assert_allclose([float(mc.data), float(mbx.data)], [tc.item(), tbx.item()], rtol=1e-5)
