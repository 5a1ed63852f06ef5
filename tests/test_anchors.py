"""Anchors: cell anchors have the requested areas and ratios; grids sit on the stride grid in (H, W, A)
order; parity with torchvision's AnchorGenerator."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimask.anchors import AnchorGenerator, generate_anchors, grid_anchors


@given(st.lists(st.sampled_from([16, 32, 64, 128, 256, 512]), min_size=1, max_size=3, unique=True),
       st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]), min_size=1, max_size=3, unique=True))
def test_cell_anchors_have_requested_areas_and_ratios(scales, ratios):
    a = generate_anchors(scales, ratios, dtype=np.float64)
    assert a.shape == (len(scales) * len(ratios), 4)
    np.testing.assert_array_equal(a[:, :2], -a[:, 2:])  # centred on (0, 0)
    np.testing.assert_array_equal(a, np.round(a))  # whole pixels
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    # ratio-major rows: row r * len(scales) + s has scale s and ratio r
    s = np.tile(np.asarray(scales, float), len(ratios))
    r = np.repeat(np.asarray(ratios, float), len(scales))
    # each half side is rounded to a whole pixel, so each side is within 1 px of exact
    np.testing.assert_allclose(w, s / np.sqrt(r), atol=1.0)
    np.testing.assert_allclose(h, s * np.sqrt(r), atol=1.0)
    np.testing.assert_allclose(w * h, s * s, rtol=2.0 * (1 / w + 1 / h).max())


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 16), st.integers(1, 16))
def test_grid_anchors_sit_on_the_stride_grid_in_hwa_order(gh, gw, sh, sw):
    cell = generate_anchors((32, 64), (0.5, 1.0, 2.0), dtype=np.float64)  # A = 6
    A = len(cell)
    out = grid_anchors(cell, (gh, gw), (sh, sw))
    assert out.shape == (gh * gw * A, 4)
    grid = out.reshape(gh, gw, A, 4)
    for y in range(gh):
        for x in range(gw):
            shift = np.array([x * sw, y * sh, x * sw, y * sh], float)
            np.testing.assert_array_equal(grid[y, x], cell + shift)


def test_anchor_generator_levels():
    gen = AnchorGenerator()  # 32..512 for P2..P6, ratios 0.5, 1, 2
    assert gen.num_anchors_per_location() == [3] * 5
    image_size = (64, 96)
    grids = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    levels = gen.grid_anchors_per_level(image_size, grids)
    assert [len(a) for a in levels] == [h * w * 3 for h, w in grids]
    assert gen.strides(image_size, grids) == [(4, 4), (8, 8), (16, 16), (32, 32), (64, 48)]
    all_anchors = gen(image_size, grids)
    assert all_anchors.shape == (sum(len(a) for a in levels), 4) and all_anchors.dtype == np.float32
    for size, a in zip((32, 64, 128, 256, 512), levels, strict=True):
        areas = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        np.testing.assert_allclose(areas, size * size, rtol=0.05)
    with pytest.raises(ValueError, match="feature maps"):
        gen(image_size, grids[:3])


@pytest.mark.oracle
def test_parity_with_torchvision(torch):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    image_size = (96, 128)
    grids = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    tv = TVAnchorGenerator(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    feats = [torch.zeros(1, 8, h, w) for h, w in grids]
    want = tv(images, feats)[0].numpy()
    np.testing.assert_array_equal(AnchorGenerator(sizes, ratios)(image_size, grids), want)
    # several scales per level, odd ratios
    tv2 = TVAnchorGenerator(((20, 40, 80),), ((0.3, 1.7),))
    ours2 = AnchorGenerator(((20, 40, 80),), ((0.3, 1.7),))
    np.testing.assert_array_equal(ours2(image_size, [(7, 9)]), tv2(images, [torch.zeros(1, 1, 7, 9)])[0].numpy())
