"""Input transform: torch-exact bilinear resize, the size rule, padding, target scaling, the target
checks (each bad field named), and the round trip of boxes; parity with torchvision (oracle)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimask.config import TransformConfig
from minimask.transform import (
    GeneralizedRCNNTransform,
    check_targets,
    resize_bilinear,
    resize_boxes,
    resized_size,
)

SEEDS = st.integers(0, 2**16)


@given(h=st.integers(1, 30), w=st.integers(1, 30), oh=st.integers(1, 40), ow=st.integers(1, 40),
       c=st.floats(-3, 3), seed=SEEDS)
def test_resize_constant_and_linear_maps(h, w, oh, ow, c, seed):
    # a constant image stays constant; bilinear interpolation reproduces a ramp in its interior
    const = np.full((2, h, w), c, np.float64)
    np.testing.assert_allclose(resize_bilinear(const, (oh, ow)), c, atol=1e-12)
    out = resize_bilinear(np.arange(h, dtype=np.float64)[:, None].repeat(w, 1), (oh, ow))
    src = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)      # half-pixel centres
    np.testing.assert_allclose(out[:, 0], src, atol=1e-5)


def test_identity_size_is_a_copy():
    x = np.random.default_rng(0).random((3, 7, 9)).astype(np.float32)
    y = resize_bilinear(x, (7, 9))
    assert (y == x).all() and y is not x


def test_resized_size_rule():
    assert resized_size(480, 640, 800, 1333)[0] == (800, 1066)            # short side reaches 800
    assert resized_size(300, 1200, 800, 1333)[0] == (333, 1333)           # long side capped at 1333
    assert resized_size(512, 512, 512, 683)[0] == (512, 512)


def test_transform_batch_targets_and_round_trip():
    rng = np.random.default_rng(1)
    images = [rng.random((3, 50, 70), dtype=np.float32), rng.random((3, 64, 40), dtype=np.float32)]
    masks = np.zeros((1, 50, 70), np.uint8)
    masks[0, 10:20, 30:50] = 1
    targets = [{"boxes": np.array([[30, 10, 50, 20]], np.float32), "labels": np.array([1]), "masks": masks},
               {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                "masks": np.zeros((0, 64, 40), np.uint8)}]
    t = GeneralizedRCNNTransform(TransformConfig(min_size=100, max_size=150))
    batch, sizes, out = t(images, targets)
    assert sizes == [(100, 140), (150, 93)]
    assert batch.shape == (2, 3, 160, 160) and batch.dtype == np.float32   # padded to multiples of 32
    assert (batch[0, :, 100:] == 0).all() and (batch[1, :, :, 93:] == 0).all()
    mean = np.array(t.config.image_mean, np.float32)[:, None, None]
    std = np.array(t.config.image_std, np.float32)[:, None, None]
    np.testing.assert_allclose(batch[0, :, :100, :140], resize_bilinear((images[0] - mean) / std, (100, 140)),
                               rtol=1e-6)
    np.testing.assert_allclose(out[0]["boxes"], [[60, 20, 100, 40]], rtol=1e-6)   # scale 2
    m = out[0]["masks"]
    assert m.shape == (1, 100, 140) and m.dtype == np.uint8
    ys, xs = np.nonzero(m[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 39, 60, 99)
    assert out[1]["masks"].shape == (0, 150, 93)
    # the inverse maps boxes back (masks are pasted by postprocess, tested in test_mask_head)
    np.testing.assert_allclose(resize_boxes(out[0]["boxes"], sizes[0], (50, 70)), targets[0]["boxes"], rtol=1e-6)


def _good():
    image = np.zeros((3, 20, 30), np.float32)
    target = {"boxes": np.array([[1, 2, 10, 12]], np.float32), "labels": np.array([3]),
              "masks": np.zeros((1, 20, 30), np.uint8)}
    return image, target


@pytest.mark.parametrize("field, change, words", [
    ("boxes", lambda t: t.update(boxes=np.array([[1, 2, 40, 12]], np.float32)), "outside"),
    ("boxes", lambda t: t.update(boxes=np.array([[10, 2, 10, 12]], np.float32)), "non-positive"),
    ("boxes", lambda t: t.update(boxes=np.array([[1, 2, 10, np.nan]], np.float32)), "non-finite"),
    ("boxes", lambda t: t.update(boxes=np.array([1, 2, 10, 12], np.float32)), "shape"),
    ("boxes", lambda t: t.update(boxes=np.array([[1, 2, 10, 12]])), "float"),
    ("labels", lambda t: t.update(labels=np.array([5])), "labels must be in"),
    ("labels", lambda t: t.update(labels=np.array([0])), "labels must be in"),
    ("labels", lambda t: t.update(labels=np.array([1.0])), "integer"),
    ("labels", lambda t: t.update(labels=np.array([1, 2])), "shape"),
    ("masks", lambda t: t.update(masks=np.zeros((1, 21, 30), np.uint8)), "image's size"),
    ("masks", lambda t: t.update(masks=np.zeros((1, 20, 30), np.float32)), "uint8"),
    ("masks", lambda t: t.pop("masks"), "missing"),
])
def test_bad_targets_name_the_field(field, change, words):
    image, target = _good()
    check_targets([image], [target], num_classes=5)            # the good one passes
    change(target)
    with pytest.raises(ValueError, match=rf"targets\[0\].*{field}.*{words}|targets\[0\].*{words}.*{field}"):
        check_targets([image], [target], num_classes=5)


@pytest.mark.oracle
@given(h=st.integers(2, 60), w=st.integers(2, 60), oh=st.integers(1, 90), ow=st.integers(1, 90), seed=SEEDS)
def test_resize_bilinear_matches_torch(torch, h, w, oh, ow, seed):
    F = torch.nn.functional
    x = np.random.default_rng(seed).random((2, h, w), dtype=np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
    # same float32 index/weight arithmetic; only the final sums may round differently
    np.testing.assert_allclose(resize_bilinear(x, (oh, ow)), ref.numpy(), atol=5e-7)


@pytest.mark.oracle
def test_transform_matches_torchvision(torch):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform as TV

    rng = np.random.default_rng(2)
    images = [rng.random((3, 427, 640), dtype=np.float32), rng.random((3, 333, 500), dtype=np.float32)]
    masks = (rng.random((2, 427, 640)) > 0.5).astype(np.uint8)
    boxes = np.array([[10, 20, 300, 400], [100.5, 7.25, 639, 426]], np.float32)
    tv = TV(512, 683, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tv.eval()
    tv_targets = [{"boxes": torch.from_numpy(boxes), "labels": torch.tensor([1, 2]), "masks": torch.from_numpy(masks)},
                  {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                   "masks": torch.zeros(0, 333, 500, dtype=torch.uint8)}]
    il, tt = tv([torch.from_numpy(im) for im in images], tv_targets)
    ours = GeneralizedRCNNTransform(TransformConfig(min_size=512, max_size=683))
    targets = [{k: v.numpy() for k, v in t.items()} for t in tv_targets]
    batch, sizes, out = ours(images, targets)
    assert sizes == [tuple(s) for s in il.image_sizes] and batch.shape == tuple(il.tensors.shape)
    # normalised values of size ~2: float32 rounding of the last sums only
    np.testing.assert_allclose(batch, il.tensors.numpy(), atol=2e-6)
    np.testing.assert_allclose(out[0]["boxes"], tt[0]["boxes"].numpy(), rtol=1e-6)
    assert (out[0]["masks"] == tt[0]["masks"].numpy()).all()
