"""Matcher, anchor labelling (crowd boxes included) and the balanced sampler."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from strategies import boxes

from minimask.boxes import box_ioa, box_iou
from minimask.matching import BalancedPositiveNegativeSampler, Matcher, label_anchors, subsample_labels

BELOW, BETWEEN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def iou_matrices(max_g=5, max_r=30):
    # quantised to 0.1 so that exact ties (and IoUs exactly at 0.3 / 0.7) are common
    shape = st.tuples(st.integers(1, max_g), st.integers(1, max_r))
    return shape.flatmap(lambda s: arrays(np.float64, s, elements=st.integers(0, 10).map(lambda v: v / 10)))


@given(iou_matrices())
def test_matcher_thresholds_and_low_quality_matches(q):
    plain = Matcher(0.7, 0.3)(q)
    best, arg = q.max(axis=0), q.argmax(axis=0)
    np.testing.assert_array_equal(plain, np.where(best >= 0.7, arg, np.where(best < 0.3, BELOW, BETWEEN)))

    m = Matcher(0.7, 0.3, allow_low_quality_matches=True)(q)
    assert m.dtype == np.int64 and m.shape == (q.shape[1],)
    assert set(np.unique(m)) <= {BELOW, BETWEEN} | set(range(q.shape[0]))
    for g in range(q.shape[0]):
        top = q[g].max()
        if top > 0:
            # every ground truth keeps its best anchors (ties included) as foreground ...
            assert np.all(m[q[g] == top] >= 0)
            # ... and is their match unless another gt overlaps such an anchor even more
            if not np.any(q[:, q[g] == top].max(axis=0) > top):
                assert np.any(m == g)
    # low-quality matching only ever turns BELOW / BETWEEN into the anchor's own best gt
    changed = m != plain
    np.testing.assert_array_equal(m[changed], arg[changed])


def test_matcher_empty_inputs():
    assert np.all(Matcher(0.7, 0.3, True)(np.zeros((0, 5))) == BELOW)
    assert Matcher(0.7, 0.3, True)(np.zeros((3, 0))).shape == (0,)
    # a zero-area gt (IoU 0 with everything) rescues no anchor
    np.testing.assert_array_equal(Matcher(0.7, 0.3, True)(np.zeros((1, 4))), [BELOW] * 4)
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


def grid_anchors_for_test():
    c = np.stack(np.meshgrid(np.arange(0, 64, 8.0), np.arange(0, 64, 8.0)), -1).reshape(-1, 2)
    return np.concatenate([np.concatenate([c - s, c + s], 1) for s in (4, 8, 16)])  # (192, 4)


@given(boxes(max_n=4, max_coord=56, min_size=2, max_size=40),
       st.lists(st.booleans(), min_size=4, max_size=4))
def test_label_anchors_with_crowd(gt, crowd_flags):
    anchors = grid_anchors_for_test()
    iscrowd = np.array(crowd_flags[: len(gt)], dtype=bool)
    labels, matched = label_anchors(anchors, gt, Matcher(0.7, 0.3, True), iscrowd)
    assert labels.shape == (len(anchors),) and matched.shape == anchors.shape
    assert set(np.unique(labels)) <= {-1.0, 0.0, 1.0}
    normal, crowd = gt[~iscrowd], gt[iscrowd]
    pos = labels == 1
    if len(normal):
        # positives regress to a non-crowd gt box
        assert all(any(np.array_equal(m, g) for g in normal) for m in matched[pos])
        best = box_iou(normal, anchors).max(axis=0)
        assert np.all(best[pos] > 0) and np.all(best[labels == 0] < 0.3)
    else:
        assert not pos.any()
    if len(crowd):
        # no anchor overlapping a crowd box is a negative
        assert not np.any((box_ioa(anchors, crowd).max(axis=1) > 0) & (labels == 0))


def test_label_anchors_no_ground_truth():
    anchors = grid_anchors_for_test()
    labels, matched = label_anchors(anchors, np.zeros((0, 4)), Matcher(0.7, 0.3, True))
    assert np.all(labels == 0) and np.all(matched == 0)
    with pytest.raises(ValueError, match="iscrowd"):
        label_anchors(anchors, np.zeros((2, 4)), Matcher(0.7, 0.3), iscrowd=np.zeros(3))


@given(arrays(np.int64, st.integers(0, 400), elements=st.integers(-1, 3)), st.integers(0, 300),
       st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.integers(0, 2**32 - 1))
def test_subsample_labels_counts_and_fractions(labels, num, frac, seed):
    pos, neg = subsample_labels(labels, num, frac, np.random.default_rng(seed))
    n_pos, n_neg = int((labels >= 1).sum()), int((labels == 0).sum())
    want_pos = min(n_pos, int(num * frac))
    assert len(pos) == want_pos
    assert len(neg) == min(n_neg, num - want_pos)
    assert np.all(labels[pos] >= 1) and np.all(labels[neg] == 0)
    assert len(np.unique(pos)) == len(pos) and len(np.unique(neg)) == len(neg)
    assert pos.dtype == np.int64 and neg.dtype == np.int64
    # reproducible from the seed
    pos2, neg2 = subsample_labels(labels, num, frac, np.random.default_rng(seed))
    np.testing.assert_array_equal(pos, pos2)
    np.testing.assert_array_equal(neg, neg2)


def test_sampler_draws_uniformly_and_returns_masks():
    labels = np.zeros(1000, np.float32)
    labels[:30] = 1  # few positives: all taken, negatives fill the rest of 256
    labels[30:60] = -1
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    rng = np.random.default_rng(0)
    pm, nm = sampler([labels, labels], rng)
    assert [m.sum() for m in pm] == [30, 30] and [m.sum() for m in nm] == [226, 226]
    assert not (pm[0] & nm[0]).any() and not nm[0][30:60].any()
    assert not np.array_equal(nm[0], nm[1])  # the generator moves on between images
    # each negative is equally likely: 226 of 940 picked, counts over many draws near 1000 * 226/940
    counts = sum(sampler([labels], rng)[1][0].astype(int) for _ in range(1000))
    expect = 1000 * 226 / 940
    assert np.abs(counts[60:] - expect).max() < 6 * np.sqrt(expect)  # 6 sigma: essentially never flaky


@pytest.mark.oracle
def test_matcher_parity_with_torchvision(torch):
    from torchvision.models.detection._utils import Matcher as TVMatcher

    rng = np.random.default_rng(0)
    for top in (1.0, 0.6) * 10:  # top 0.6: no anchor reaches 0.7, all positives are rescued ones
        # rounded to 0.05 for ties; 50 draws make a gt with best IoU 0 (where the two differ) improbable
        q = np.round(rng.uniform(0, top, (rng.integers(1, 6), 50)) * 20) / 20
        q = q.astype(np.float32)
        for low_quality in (False, True):
            want = TVMatcher(0.7, 0.3, low_quality)(torch.from_numpy(q)).numpy()
            np.testing.assert_array_equal(Matcher(0.7, 0.3, low_quality)(q), want)
