"""The synthetic shapes dataset: deterministic, COCO-valid, masks consistent with boxes."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from minimask.shapes import ShapesConfig, generate_shapes


@pytest.fixture(scope="module")
def train_json(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), "train", num_images=12, seed=3)


def test_coco_api_reads_it(train_json):
    coco = COCO(str(train_json))
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert len(coco.getImgIds()) == 12
    assert len(coco.getAnnIds()) >= 12  # at least one shape per image on average


def test_every_mask_matches_its_box_and_area(train_json):
    doc = json.loads(train_json.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    for ann in doc["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        assert m.shape == sizes[ann["image_id"]]
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h), ann["id"]
        assert ann["area"] == m.sum() >= 16
        assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)


def test_visible_masks_do_not_overlap(train_json):
    coco = COCO(str(train_json))
    for img_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        if masks:
            assert np.stack(masks).sum(0).max() <= 1


def test_same_seed_same_bytes_and_splits_differ(tmp_path):
    a = generate_shapes(tmp_path / "a", "train", num_images=3, seed=7)
    b = generate_shapes(tmp_path / "b", "train", num_images=3, seed=7)
    v = generate_shapes(tmp_path / "a", "val", num_images=3, seed=7)
    assert a.read_text() == b.read_text()
    for i in range(1, 4):
        name = f"{i:06d}.png"
        assert (tmp_path / "a/images/train" / name).read_bytes() == (tmp_path / "b/images/train" / name).read_bytes()
        assert (tmp_path / "a/images/train" / name).read_bytes() != (tmp_path / "a/images/val" / name).read_bytes()
    assert json.loads(v.read_text())["annotations"] != json.loads(a.read_text())["annotations"]


def test_existing_split_is_reused_only_with_same_parameters(tmp_path):
    p = generate_shapes(tmp_path, "train", num_images=2, seed=0)
    stamp = p.stat().st_mtime_ns
    assert generate_shapes(tmp_path, "train", num_images=2, seed=0) == p
    assert p.stat().st_mtime_ns == stamp
    generate_shapes(tmp_path, "train", num_images=3, seed=0, config=ShapesConfig(image_size=64))
    doc = json.loads(p.read_text())
    assert len(doc["images"]) == 3 and doc["images"][0]["height"] == 64
