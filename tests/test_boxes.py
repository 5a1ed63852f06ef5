"""Box ops: IoU, IoA, clipping, small-box removal, the box coder; parity with torchvision."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import boxes

from minimask.boxes import (
    BBOX_XFORM_CLIP,
    BoxCoder,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes_to_image,
    decode_boxes,
    encode_boxes,
    remove_small_boxes,
)

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def naive_iou(a, b):
    """One pair at a time, straight from the definition."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_iou_worked_example():
    # two 2x2 squares overlapping in a 1x1 square: 1 / (4 + 4 - 1); a box 2 px to the right: 0
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0, 1.0]], rtol=1e-15)
    np.testing.assert_allclose(box_ioa(b, a), [[1 / 4], [0.0], [1.0]], rtol=1e-15)


@given(boxes(max_n=8), boxes(max_n=8))
def test_iou_properties(b1, b2):
    iou = box_iou(b1, b2)
    assert iou.shape == (len(b1), len(b2))
    np.testing.assert_allclose(iou, box_iou(b2, b1).T, rtol=0, atol=0)  # symmetric, bit for bit
    assert np.all((iou >= 0) & (iou <= 1))
    np.testing.assert_allclose(np.diag(box_iou(b1, b1)), 1.0, rtol=1e-12)  # drawn sizes are >= 1
    want = np.array([[naive_iou(p, q) for q in b2] for p in b1]).reshape(iou.shape)
    np.testing.assert_allclose(iou, want, rtol=1e-12, atol=1e-15)
    # IoA: in [0, 1] and never below IoU (the union is at least the box's own area)
    ioa = box_ioa(b1, b2)
    assert np.all((ioa >= 0) & (ioa <= 1 + 1e-12)) and np.all(ioa >= iou - 1e-12)


def test_degenerate_and_empty_boxes_give_no_nan():
    flat = np.array([[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]])  # zero width
    normal = np.array([[0.0, 0.0, 10.0, 10.0]])
    for a, b in [(flat, flat), (flat, normal), (normal, flat)]:
        for f in (box_iou, box_ioa):
            out = f(a, b)
            assert np.isfinite(out).all() and np.all(out == 0)
    assert box_iou(np.zeros((0, 4)), normal).shape == (0, 1)
    assert box_iou(normal, np.zeros((0, 4))).shape == (1, 0)
    assert remove_small_boxes(np.zeros((0, 4)), 1.0).shape == (0,)
    assert clip_boxes_to_image(np.zeros((0, 4)), (5, 5)).shape == (0, 4)
    assert encode_boxes(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)
    assert decode_boxes(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)


def test_float32_stays_float32():
    b = np.array([[0, 0, 4, 4], [1, 1, 5, 6]], dtype=np.float32)
    assert box_iou(b, b).dtype == np.float32
    assert box_area(b).dtype == np.float32
    assert clip_boxes_to_image(b, (3, 3)).dtype == np.float32
    for w in (RPN_WEIGHTS, BOX_HEAD_WEIGHTS):
        d = encode_boxes(b, b[::-1].copy(), w)
        assert d.dtype == np.float32
        assert decode_boxes(d, b, w).dtype == np.float32


@given(boxes(max_n=10, max_coord=60), st.integers(1, 80), st.integers(1, 80))
def test_clip_boxes(b, h, w):
    c = clip_boxes_to_image(b, (h, w))
    assert np.all((c[:, 0::2] >= 0) & (c[:, 0::2] <= w)) and np.all((c[:, 1::2] >= 0) & (c[:, 1::2] <= h))
    inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
    np.testing.assert_array_equal(c[inside], b[inside])  # boxes already inside are untouched
    np.testing.assert_array_equal(clip_boxes_to_image(c, (h, w)), c)  # idempotent


@given(boxes(max_n=12, min_size=0, max_size=6), st.floats(0, 5))
def test_remove_small_boxes(b, min_size):
    keep = remove_small_boxes(b, min_size)
    assert keep.dtype == np.int64
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    np.testing.assert_array_equal(keep, np.flatnonzero((w >= min_size) & (h >= min_size)))


@pytest.mark.parametrize("weights", [RPN_WEIGHTS, BOX_HEAD_WEIGHTS])
@given(data=st.data())
def test_decode_inverts_encode(weights, data):
    # sizes 1..50 keep every width ratio below 62.5 = exp(clamp): the clamp never bites here
    anchors = data.draw(boxes(min_n=1, max_n=12))
    targets = data.draw(boxes(min_n=len(anchors), max_n=len(anchors)))
    deltas = encode_boxes(targets, anchors, weights)
    np.testing.assert_allclose(decode_boxes(deltas, anchors, weights), targets, rtol=1e-12, atol=1e-9)
    coder = BoxCoder(weights)
    np.testing.assert_allclose(coder.decode_single(coder.encode_single(targets, anchors), anchors), targets,
                               rtol=1e-12, atol=1e-9)
    # and a box encoded against itself is the zero delta
    np.testing.assert_allclose(encode_boxes(anchors, anchors, weights), 0.0, atol=1e-12)


def test_encode_worked_example():
    # anchor centre (5, 5) size 10x10; target centre (7, 4) size 20x5
    anchor = np.array([[0.0, 0.0, 10.0, 10.0]])
    target = np.array([[-3.0, 1.5, 17.0, 6.5]])
    want = [0.2, -0.1, math.log(2.0), math.log(0.5)]
    np.testing.assert_allclose(encode_boxes(target, anchor), [want], rtol=1e-12)
    np.testing.assert_allclose(encode_boxes(target, anchor, BOX_HEAD_WEIGHTS),
                               [[2.0, -1.0, 5 * math.log(2.0), 5 * math.log(0.5)]], rtol=1e-12)


def test_decode_clamps_huge_sizes_and_handles_many_classes():
    anchors = np.array([[0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 20.0, 30.0]], dtype=np.float32)
    deltas = np.array([[0.0, 0.0, 1e4, 1e4], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    out = decode_boxes(deltas, anchors)
    assert np.isfinite(out).all()
    # clamped at log(1000/16): the 16 px anchor grows to at most 1000 px
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 16 * math.exp(BBOX_XFORM_CLIP), rtol=1e-5)
    np.testing.assert_allclose(out[1], anchors[1])
    # K = 3 classes: (N, 12) deltas decode class by class, equal to decoding each slice
    rng = np.random.default_rng(0)
    d3 = rng.normal(size=(2, 12))
    out3 = decode_boxes(d3, anchors.astype(np.float64), BOX_HEAD_WEIGHTS)
    for k in range(3):
        np.testing.assert_allclose(out3[:, 4 * k:4 * k + 4],
                                   decode_boxes(d3[:, 4 * k:4 * k + 4], anchors.astype(np.float64), BOX_HEAD_WEIGHTS))


def test_box_coder_lists():
    rng = np.random.default_rng(1)
    a = [np.array([[0.0, 0, 4, 4], [2, 2, 9, 5]]), np.array([[1.0, 1, 3, 8]])]
    g = [x + rng.uniform(-0.5, 0.5, x.shape) for x in a]
    coder = BoxCoder()
    codes = coder.encode(g, a)
    assert [c.shape for c in codes] == [(2, 4), (1, 4)]
    dec = coder.decode(np.concatenate(codes), a)
    assert dec.shape == (3, 1, 4)
    np.testing.assert_allclose(dec[:, 0], np.concatenate(g), rtol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou(np.zeros((3, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="pair up"):
        encode_boxes(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="4K"):
        decode_boxes(np.zeros((2, 5)), np.zeros((2, 4)))


@pytest.mark.oracle
def test_parity_with_torchvision(torch):
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
    from torchvision.ops import box_iou as tv_box_iou
    from torchvision.ops import clip_boxes_to_image as tv_clip
    from torchvision.ops import remove_small_boxes as tv_remove

    rng = np.random.default_rng(0)
    c = rng.uniform(0, 300, (50, 2))
    wh = rng.uniform(0, 80, (50, 2))
    b = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    tb = torch.from_numpy(b)
    # float32 on both sides, same formula: equal up to one rounding
    np.testing.assert_allclose(box_iou(b[:20], b), tv_box_iou(tb[:20], tb).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(clip_boxes_to_image(b, (200, 250)), tv_clip(tb, (200, 250)).numpy())
    np.testing.assert_array_equal(remove_small_boxes(b, 10.0), tv_remove(tb, 10.0).numpy())
    anchors = b[wh.min(axis=1) > 8]  # the +-3 px jitter below keeps the targets valid
    targets = anchors[::-1].copy() + rng.uniform(-3, 3, anchors.shape).astype(np.float32)
    deltas = rng.normal(0, 2, (len(anchors), 8)).astype(np.float32)  # two classes, some dw past the clamp
    for w in (RPN_WEIGHTS, BOX_HEAD_WEIGHTS):
        tv = TVBoxCoder(w)
        np.testing.assert_allclose(encode_boxes(targets, anchors, w),
                                   tv.encode_single(torch.from_numpy(targets), torch.from_numpy(anchors)).numpy(),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(decode_boxes(deltas, anchors, w),
                                   tv.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy(),
                                   rtol=1e-5, atol=1e-3)
