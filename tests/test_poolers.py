"""Multi-level RoIAlign: the level mapper, input order, gradients to every level, torchvision parity."""

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimask.poolers import MultiScaleRoIAlign, map_levels, multiscale_roi_align
from minimask.roi_align import roi_align, roi_align_backward, roi_align_forward
from minimask.tape import Tensor

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def pyramid(rng, N=2, C=3, size=(128, 96), dtype=np.float64):
    return [rng.standard_normal((N, C, size[0] // 2**i // 4, size[1] // 2**i // 4)).astype(dtype)
            for i in range(4)]


def boxes_of_sizes(rng, N, sides, image=(128, 96)):
    sides = np.asarray(sides, float)
    x1 = rng.uniform(-10, image[1], sides.size)
    y1 = rng.uniform(-10, image[0], sides.size)
    return np.stack([rng.integers(0, N, sides.size), x1, y1, x1 + sides, y1 + sides], axis=1)


def test_level_mapper_values():
    """224x224 -> P4 (the canonical ImageNet size); halving the side -> one level finer."""
    sides = np.array([1, 56, 111.9, 112, 223.9, 224, 447.9, 448, 5000])
    b = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    np.testing.assert_array_equal(map_levels(b), [2, 2, 2, 3, 3, 4, 4, 5, 5])
    np.testing.assert_array_equal(map_levels(np.zeros((1, 4))), [2])          # zero area: finest


@given(a=st.lists(st.floats(0, 3000), min_size=2, max_size=30), r=st.floats(0.1, 10))
def test_level_mapper_monotone(a, r):
    sides = np.sort(np.asarray(a))
    b = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides * r, sides / r], axis=1)  # area = side^2
    k = map_levels(b)
    assert np.all(np.diff(k) >= 0) and k.min() >= 2 and k.max() <= 5


@given(seed=st.integers(0, 2**31 - 1), K=st.integers(0, 25), size=st.sampled_from([7, 14]),
       aligned=st.booleans())
def test_rows_in_input_order(seed, K, size, aligned):
    """Row i equals RoIAlign of box i alone on the level the mapper picked for it."""
    rng = np.random.default_rng(seed)
    feats = pyramid(rng)
    rois = boxes_of_sizes(rng, 2, np.exp(rng.uniform(np.log(4), np.log(600), K)))
    out = multiscale_roi_align(feats, rois, size, SCALES, 2, aligned).data
    assert out.shape == (K, 3, size, size)
    levels = map_levels(rois) - 2
    for i in range(K):
        one = roi_align(feats[levels[i]], rois[i:i + 1], size, SCALES[levels[i]], 2, aligned).data
        np.testing.assert_allclose(out[i], one[0], atol=1e-12)   # float64; padding may reorder sums


def test_gradient_reaches_every_level(rng):
    feats = pyramid(rng)
    rois = boxes_of_sizes(rng, 2, [8, 20, 60, 130, 300, 500, 16])
    ts = [Tensor(f, requires_grad=True) for f in feats]
    out = multiscale_roi_align(ts, rois, 7, SCALES, 2, True)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    levels = map_levels(rois) - 2
    for lvl in range(4):
        pos = np.flatnonzero(levels == lvl)
        _, cache = roi_align_forward(feats[lvl], rois[pos], 7, SCALES[lvl], 2, True)
        expected, _ = roi_align_backward(g[pos], cache)
        np.testing.assert_allclose(ts[lvl].grad, expected, atol=1e-12)
        assert pos.size and np.abs(expected).sum() > 0                    # every level was used


def test_empty_and_single_level(rng):
    feats = pyramid(rng, dtype=np.float32)
    out = multiscale_roi_align(feats, np.zeros((0, 5), np.float32), 14, SCALES, 2).data
    assert out.shape == (0, 3, 14, 14) and out.dtype == np.float32
    rois = boxes_of_sizes(rng, 2, [30, 300]).astype(np.float32)
    one = multiscale_roi_align(feats[:1], rois, 7, SCALES[:1], 2).data
    np.testing.assert_array_equal(one, roi_align(feats[0], rois, 7, SCALES[0], 2).data)
    with pytest.raises(ValueError, match="scales"):
        multiscale_roi_align(feats, rois, 7, SCALES[:2])


@pytest.mark.oracle
@pytest.mark.parametrize("size, sr", [(7, 2), (14, 2), (7, 0)])
def test_torchvision_multiscale_parity(torch, size, sr):
    import torchvision

    rng = np.random.default_rng(5)
    feats = OrderedDict((str(i), f) for i, f in enumerate(pyramid(rng, dtype=np.float32)))
    boxes = [boxes_of_sizes(rng, 1, np.exp(rng.uniform(np.log(4), np.log(400), 40)))[:, 1:].astype(np.float32)
             for _ in range(2)]
    shapes = [(128, 96), (120, 90)]
    ours = MultiScaleRoIAlign(list(feats), size, sr)(feats, boxes, shapes).data
    theirs = torchvision.ops.MultiScaleRoIAlign(list(feats), size, sr)(
        OrderedDict((k, torch.tensor(v)) for k, v in feats.items()), [torch.tensor(b) for b in boxes], shapes
    )
    # float32: same samples, different summation order
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)
