"""NMS: the greedy rule's properties, equality with a brute-force reference, batched NMS, parity."""

import contextlib
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import boxes_and_scores, clustered_boxes, random_boxes

from minimask.boxes import box_iou
from minimask.nms import batched_nms, nms

nms_module = importlib.import_module("minimask.nms")  # the module (minimask.nms is the function)
sweep_module = importlib.import_module("minimask.fast.nms")  # the sweep engine

THRESHOLDS = st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])


def reference_nms(b, s, t):
    """The textbook loop: best remaining box, drop everything above t with it, repeat."""
    order = np.argsort(-s, kind="stable")
    iou = box_iou(b, b) if len(b) <= 2000 else None  # big inputs: one row at a time, not N^2 memory
    keep, dropped = [], np.zeros(len(b), bool)
    for i in order:
        if not dropped[i]:
            keep.append(i)
            dropped |= (iou[i] if iou is not None else box_iou(b[i:i + 1], b)[0]) > t
    return np.array(keep, dtype=np.int64)


def reference_batched(b, s, idxs, t):
    keep = []
    for c in np.unique(idxs):
        m = np.flatnonzero(idxs == c)
        keep.extend(m[reference_nms(b[m], s[m], t)])
    return np.array(sorted(keep, key=lambda i: (-s[i], i)), dtype=np.int64)


# each property runs with the default elimination rounds and with 4-box rounds (many rounds)
SEED_SIZES = pytest.mark.parametrize("seed_size", [sweep_module._SEED, 4])


@contextlib.contextmanager
def seed_rounds(size):
    old, sweep_module._SEED = sweep_module._SEED, size
    try:
        yield
    finally:
        sweep_module._SEED = old


@SEED_SIZES
@given(data=boxes_and_scores(max_n=40, integer=True, max_coord=30, max_size=15, dtype=np.float32),
       t=THRESHOLDS)
def test_nms_properties(seed_size, data, t):
    b, s = data
    with seed_rounds(seed_size):
        keep = nms(b, s, t)
    assert keep.dtype == np.int64
    assert len(np.unique(keep)) == len(keep) and np.all((keep >= 0) & (keep < len(b)))
    assert np.all(np.diff(s[keep]) <= 0)  # sorted by decreasing score
    iou = box_iou(b, b)
    kk = iou[np.ix_(keep, keep)]
    assert not np.any(np.triu(kk, 1) > t)  # no kept pair above the threshold
    dropped = np.setdiff1d(np.arange(len(b)), keep)
    for j in dropped:  # every dropped box is overlapped by a kept box ranked above it
        above = (s[keep] > s[j]) | ((s[keep] == s[j]) & (keep < j))
        assert np.any(iou[keep[above], j] > t)
    np.testing.assert_array_equal(keep, reference_nms(b, s, t))
    with seed_rounds(seed_size):
        again = nms(b[keep], s[keep], t)
    np.testing.assert_array_equal(again, np.arange(len(keep)))  # idempotent


@SEED_SIZES
@given(data=boxes_and_scores(max_n=40, ties=True, integer=True, max_coord=30, max_size=15), t=THRESHOLDS)
def test_nms_ties_equal_reference(seed_size, data, t):
    b, s = data  # float64 boxes, scores from 4 values: many ties, kept in input order
    with seed_rounds(seed_size):
        keep = nms(b, s, t)
    np.testing.assert_array_equal(keep, reference_nms(b, s, t))


@given(data=boxes_and_scores(max_n=30, max_coord=50, max_size=30), t=THRESHOLDS, seed=st.integers(0, 1000))
def test_nms_invariant_to_input_order(data, t, seed):
    b, s = data  # unique scores: the ranking does not depend on the input order
    perm = np.random.default_rng(seed).permutation(len(b))
    np.testing.assert_array_equal(perm[nms(b[perm], s[perm], t)], nms(b, s, t))


@SEED_SIZES
@given(data=boxes_and_scores(max_n=40, ties=True, integer=True, max_coord=30, max_size=15),
       t=THRESHOLDS, classes=st.integers(1, 4), seed=st.integers(0, 1000))
def test_batched_nms_equals_per_class_nms(seed_size, data, t, classes, seed):
    b, s = data
    idxs = np.random.default_rng(seed).integers(0, classes, len(b)) * 7 - 3  # arbitrary labels
    with seed_rounds(seed_size):
        keep = batched_nms(b, s, idxs, t)
    np.testing.assert_array_equal(keep, reference_batched(b, s, idxs, t))


@pytest.mark.slow
@SEED_SIZES
@settings(max_examples=400)
@given(data=boxes_and_scores(max_n=150, ties=True, integer=True, max_coord=60, max_size=30),
       t=st.floats(0, 1), classes=st.integers(1, 3), seed=st.integers(0, 1000))
def test_nms_many_examples(seed_size, data, t, classes, seed):
    """The deep sweep: more, bigger, tie-heavy inputs and arbitrary thresholds (run with -m slow)."""
    b, s = data
    idxs = np.random.default_rng(seed).integers(0, classes, len(b))
    with seed_rounds(seed_size):
        keep, batched = nms(b, s, t), batched_nms(b, s, idxs, t)
    np.testing.assert_array_equal(keep, reference_nms(b, s, t))
    np.testing.assert_array_equal(batched, reference_batched(b, s, idxs, t))


@pytest.mark.slow
@pytest.mark.parametrize("n", [4000, 12000])
def test_nms_big_inputs_equal_reference(n):
    rng = np.random.default_rng(n)
    for b in (random_boxes(rng, n), clustered_boxes(rng, n, clusters=30)):
        s = rng.random(n).astype(np.float32)
        for t in (0.3, 0.5, 0.7, 0.9):
            np.testing.assert_array_equal(nms(b, s, t), reference_nms(b, s, t))


@pytest.mark.parametrize("kind", ["random", "clustered", "chain"])
def test_nms_large_inputs_equal_reference(kind):
    # enough boxes to exercise the chunked pair sweep, the elimination rounds and the sequential finish
    rng = np.random.default_rng(0)
    if kind == "random":
        b = random_boxes(rng, 1500)
    elif kind == "clustered":
        b = clustered_boxes(rng, 1500)
    else:  # each box overlaps its neighbours: the resolve needs its sequential finish
        x = np.arange(1500, dtype=np.float32)
        b = np.stack([x, x * 0, x + 100, x * 0 + 100], axis=1)
    s = rng.random(len(b)).astype(np.float32) if kind != "chain" else np.linspace(1, 0, len(b), dtype=np.float32)
    for t in (0.5, 0.7):
        np.testing.assert_array_equal(nms(b, s, t), reference_nms(b, s, t))
    idxs = rng.integers(0, 5, len(b))
    np.testing.assert_array_equal(batched_nms(b, s, idxs, 0.5), reference_batched(b, s, idxs, 0.5))


def test_nms_edge_cases():
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).shape == (0,)
    # zero-width boxes overlap nothing, not even each other: all kept, no NaN trouble
    flat = np.array([[1, 1, 1, 5], [1, 1, 1, 5], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(nms(flat, np.array([0.1, 0.9, 0.5], np.float32), 0.0), [1, 2, 0])
    # a negative threshold: every pair is "above" it, only the best box (per class) survives
    b = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]], np.float32)
    s = np.array([0.2, 0.9, 0.5], np.float32)
    np.testing.assert_array_equal(nms(b, s, -0.5), [1])
    np.testing.assert_array_equal(batched_nms(b, s, np.array([0, 0, 1]), -0.5), [1, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        nms(np.array([[0, 0, np.nan, 1]], np.float32), np.ones(1, np.float32), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(b, s[:2], 0.5)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        nms(b[:, :3], s, 0.5)


@pytest.mark.oracle
def test_parity_with_torchvision(torch):
    import torchvision

    rng = np.random.default_rng(0)
    for b in (random_boxes(rng, 3000), clustered_boxes(rng, 3000)):
        s = rng.random(len(b)).astype(np.float32)
        idxs = rng.integers(0, 10, len(b))
        tb, ts = torch.from_numpy(b), torch.from_numpy(s)
        for t in (0.3, 0.5, 0.7):
            np.testing.assert_array_equal(nms(b, s, t), torchvision.ops.nms(tb, ts, t).numpy())
            want = torchvision.ops.batched_nms(tb, ts, torch.from_numpy(idxs), t).numpy()
            np.testing.assert_array_equal(batched_nms(b, s, idxs, t), want)


def test_device_path_equals_host_path_through_the_kernel_emulation():
    """The CuPy branch (`_nms_on_device`: kernels/nms.cu + the class-offset trick) run on NumPy arrays,
    which the kernel wrapper executes in the CPU emulation of the same .cu source."""
    pytest.importorskip("minimask.kernels")
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ not installed: the CUDA emulation needs it")
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(10, 80, (300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.random(300).astype(np.float32)
    idxs = rng.integers(0, 4, 300)
    for t in (0.3, 0.7):
        np.testing.assert_array_equal(nms_module._nms_on_device(boxes, scores, t, None), nms(boxes, scores, t))
        np.testing.assert_array_equal(nms_module._nms_on_device(boxes, scores, t, idxs),
                                      batched_nms(boxes, scores, idxs, t))
