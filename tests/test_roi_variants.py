"""The paper's Table 2c RoI extractors beside RoIAlign: max-aggregation RoIAlign (roi_align_max.py), RoIWarp
(roi_warp.py), and RoIPool through the pooler (poolers.pool_rois).

Checked: float64 gradients (central differences); an independent per-bin loop for the max; RoIWarp equal to
torchvision's RoIAlign on the snapped box and, on whole-cell boxes sampled once per cell, to the cells themselves
and to RoIPool; the pooler's RoIPool equal to torchvision's; the stand-in device equal to NumPy.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimask.poolers import multiscale_roi_align, pool_rois
from minimask.roi_align import bilinear_interpolate, roi_align_forward, roi_align_geometry
from minimask.roi_align_max import roi_align_max, roi_align_max_backward, roi_align_max_forward
from minimask.roi_pool import roi_pool_forward
from minimask.roi_warp import quantize_rois, roi_warp, roi_warp_backward, roi_warp_forward
from minimask.tape import Tensor
from minimask.testing import fake_cuda as fc
from tests.gradcheck import gradcheck
from tests.strategies import boxes as box_strategy

ROIS = np.array([[0, 1.3, 2.2, 20.1, 15.7], [1, -3, 4, 8, 30], [0, 5, 5, 5.5, 6], [1, 0, 0, 19, 17]], np.float64)


def _naive_max(x, rois, size, scale, sr, aligned):
    """Per RoI, per bin, per sample: bilinear_interpolate, then the max (0 for an empty bin)."""
    ph, pw = size
    g = roi_align_geometry(rois, size, scale, sr, aligned)
    out = np.zeros((rois.shape[0], x.shape[1], ph, pw))
    for k in range(rois.shape[0]):
        gh, gw = int(g["grid_h"][k]), int(g["grid_w"][k])
        for p in range(ph):
            for q in range(pw):
                by, bx = g["bin_h"][k], g["bin_w"][k]
                y0, x0 = g["start_y"][k] + p * by, g["start_x"][k] + q * bx
                vals = [bilinear_interpolate(x[int(g["batch"][k])], np.array(y0 + (i + .5) * by / gh),
                                             np.array(x0 + (j + .5) * bx / gw))
                        for i in range(gh) for j in range(gw)]
                if vals:
                    out[k, :, p, q] = np.max(np.stack(vals), axis=0)
    return out


@pytest.mark.parametrize("sr", [2, -1, 1])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_max_forward_equals_a_per_bin_loop_and_its_gradient_checks(rng, sr, aligned):
    x = rng.standard_normal((2, 3, 9, 10))
    out, _ = roi_align_max_forward(x, ROIS, (3, 4), 0.5, sr, aligned)
    np.testing.assert_allclose(out, _naive_max(x, ROIS, (3, 4), 0.5, sr, aligned), rtol=1e-12, atol=1e-12)
    # random normal inputs: ties between a bin's samples have probability 0, so the max is differentiable
    gradcheck(roi_align_max_forward, roi_align_max_backward, [x, ROIS], wrt=[0],
              settings=dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=sr, aligned=aligned))


@given(seed=st.integers(0, 2**31 - 1), b=box_strategy(min_n=1, max_n=6, max_coord=40, max_size=30),
       aligned=st.booleans(), sr=st.sampled_from([-1, 1, 2, 3]))
def test_max_is_at_least_the_mean_and_equal_to_it_with_one_sample(seed, b, aligned, sr):
    x = np.random.default_rng(seed).standard_normal((1, 2, 12, 12))
    rois = np.concatenate([np.zeros((b.shape[0], 1)), b], axis=1)
    mx = roi_align_max_forward(x, rois, (2, 3), 0.25, sr, aligned)[0]
    avg = roi_align_forward(x, rois, (2, 3), 0.25, sr, aligned)[0]
    assert (mx >= avg - 1e-12).all()
    if sr == 1:   # one sample per bin: the max of one value is the value
        np.testing.assert_allclose(mx, avg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggregation", ["avg", "max"])
def test_roi_warp_gradient_checks(rng, aggregation):
    x = rng.standard_normal((2, 3, 9, 10))
    gradcheck(roi_warp_forward, roi_warp_backward, [x, ROIS], wrt=[0],
              settings=dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2, aggregation=aggregation))


def test_roi_warp_is_torchvision_roi_align_on_the_cells_roi_pool_uses(rng, torch):
    import torchvision

    x = rng.standard_normal((2, 3, 9, 10))
    q = quantize_rois(ROIS, 0.5)
    cells = np.stack([np.sign(ROIS[:, 1:]) * np.floor(np.abs(ROIS[:, 1:] * 0.5) + 0.5)], 0)[0]   # C's round()
    np.testing.assert_allclose(q[:, 1:3] * 0.5, cells[:, :2])
    np.testing.assert_allclose(q[:, 3:] * 0.5, np.maximum(cells[:, 2:] + 1, cells[:, :2] + 1))   # end cell included
    want = torchvision.ops.roi_align(torch.from_numpy(x), torch.from_numpy(q), (3, 4), 0.5, 2, aligned=True).numpy()
    np.testing.assert_allclose(roi_warp_forward(x, ROIS, (3, 4), 0.5, 2)[0], want, rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), b=box_strategy(min_n=1, max_n=5, max_coord=10, max_size=6, integer=True))
def test_roi_warp_of_whole_cells_sampled_once_per_cell_is_roi_pool(seed, b):
    """A box with integer corners at scale 1 covers cells x1..x2: with one output per cell and one sample per
    bin, each sample sits on a cell centre, so RoIWarp (avg or max) returns the cells, as RoIPool does."""
    x = np.random.default_rng(seed).standard_normal((1, 2, 18, 18))
    for x1, y1, x2, y2 in b.astype(int):
        size = (y2 - y1 + 1, x2 - x1 + 1)
        roi = np.array([[0, x1, y1, x2, y2]], np.float64)
        crop = x[0, :, y1:y2 + 1, x1:x2 + 1]
        for agg in ("avg", "max"):
            np.testing.assert_allclose(roi_warp_forward(x, roi, size, 1.0, 1, agg)[0][0], crop, atol=1e-12)
        np.testing.assert_allclose(roi_pool_forward(x, roi, size, 1.0)[0][0], crop, atol=1e-12)


def test_the_poolers_roi_pool_is_torchvisions(rng, torch):
    import torchvision

    feats = [rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
             rng.standard_normal((2, 4, 8, 8)).astype(np.float32)]
    rois = np.array([[0, 3, 4, 30, 40], [1, 10, 2, 60, 63], [0, 0, 0, 500, 400]], np.float32)
    out = multiscale_roi_align(feats, rois, 7, [0.25, 0.125], method="roi_pool", canonical_scale=32,
                               canonical_level=2).data
    # the first two boxes are small (P2), the third large (P3): the mapper's choice, checked here by hand
    want = [torchvision.ops.roi_pool(torch.from_numpy(f), torch.from_numpy(rois[i:i + 1]), 7, s).numpy()[0]
            for i, (f, s) in enumerate([(feats[0], 0.25), (feats[0], 0.25), (feats[1], 0.125)])]
    np.testing.assert_array_equal(out, np.stack(want))


def test_pool_rois_rejects_unknown_switches(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(ValueError, match="extractor"):
        pool_rois(x, ROIS[:1] * 0, 2, 1.0, 2, True, method="roi_bilinear")
    with pytest.raises(ValueError, match="aggregation"):
        pool_rois(x, ROIS[:1] * 0, 2, 1.0, 2, True, aggregation="median")


@pytest.mark.parametrize("method,aggregation", [("roi_align", "max"), ("roi_warp", "avg"), ("roi_warp", "max")])
def test_variants_on_the_stand_in_device_equal_numpy_without_a_sync(rng, method, aggregation):
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    rois = ROIS.astype(np.float32)
    g = rng.standard_normal((4, 3, 3, 4)).astype(np.float32)
    results = []
    for xp in (np, fc):
        t = Tensor(xp.asarray(x), requires_grad=True)
        fc.reset_counters()
        out = pool_rois(t, xp.asarray(rois), (3, 4), 0.5, 2, True, method, aggregation)
        out.backward(xp.asarray(g))
        if xp is fc:
            assert fc.sync_count() == 0      # a fixed sampling ratio: no shape read back from the device
        results.append((fc.asnumpy(out.data) if xp is fc else out.data, fc.asnumpy(t.grad) if xp is fc else t.grad))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6, atol=1e-6)


def test_public_wrappers_take_tensors_and_lists(rng):
    x = Tensor(rng.standard_normal((1, 2, 6, 6)), requires_grad=True)
    boxes = [np.array([[0.5, 0.5, 4.0, 5.0]])]
    for out in (roi_align_max(x, boxes, 2, 1.0, 2, True), roi_warp(x, boxes, 2, 1.0, 2, "max")):
        assert out.shape == (1, 2, 2, 2)
        out.backward(np.ones(out.shape))
    assert x.grad is not None and np.isfinite(x.grad).all()
