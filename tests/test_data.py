"""The COCO data pipeline: coco128, the package's sample, shapes; masks vs boxes, flips, batching, resume, bad input."""

import json

import numpy as np
import pytest

from minimask import paths
from minimask.data import CocoDataset, DataError, DataLoader, coco_paths, hflip, shapes_paths
from minimask.shapes import generate_shapes


@pytest.fixture(scope="module")
def coco128():
    try:
        root = paths.coco128_dir()
    except FileNotFoundError as e:
        pytest.skip(f"coco128 not available: {e}")
    return CocoDataset(root / "train2017", root / "annotations" / "instances_train2017.json")


@pytest.fixture(scope="module", params=["coco128", "sample"])
def coco(request):
    """Real COCO data both ways: coco128 (skipped when absent) and the package's sample (always there)."""
    if request.param == "sample":
        return CocoDataset(*coco_paths(paths.SAMPLE_DIR, "train2017"))
    return request.getfixturevalue("coco128")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, "train", num_images=10, seed=0)
    return CocoDataset(*shapes_paths(root, "train"))


def _mask_inside_box(target):
    for box, m in zip(target["boxes"], target["masks"], strict=True):
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        # pycocotools rasterises polygons to the pixels whose centres fall inside, so a mask may
        # reach one pixel past the rounded box edge but never further
        assert xs.min() >= np.floor(box[0]) - 1 and xs.max() + 1 <= np.ceil(box[2]) + 1
        assert ys.min() >= np.floor(box[1]) - 1 and ys.max() + 1 <= np.ceil(box[3]) + 1


def test_coco128_items(coco128):
    assert len(coco128) == 128 and coco128.num_classes == 81
    n_crowd = n_empty = n_ann = 0
    for i in range(len(coco128)):
        t = coco128.load_target(i)
        info = coco128.image_info(i)
        assert t["masks"].shape == (len(t["boxes"]), info["height"], info["width"])
        assert t["labels"].dtype == np.int64 and ((t["labels"] >= 1) & (t["labels"] <= 80)).all()
        assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all() and (t["boxes"][:, 3] > t["boxes"][:, 1]).all()
        _mask_inside_box(t)
        n_crowd += int(t["iscrowd"].sum())
        n_empty += len(t["boxes"]) == 0
        n_ann += len(t["boxes"])
    assert (n_ann, n_crowd, n_empty) == (939, 10, 2)  # counts stated in coco128's SOURCE.md


def test_labels_map_back_to_coco_category_ids(coco):
    t = coco.load_target(0)
    anns = coco.coco.loadAnns(coco.coco.getAnnIds(imgIds=t["image_id"]))
    assert sorted(coco.label_to_cat_id[t["labels"]].tolist()) == sorted(a["category_id"] for a in anns)


def test_image_is_chw_float_in_unit_range(coco):
    image, _ = coco[0]
    assert image.dtype == np.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1


@pytest.mark.parametrize("index", [0, 3, 7])
def test_flip_is_consistent_for_image_boxes_and_masks(shapes, index):
    image, target = shapes[index]
    fi, ft = hflip(image, target)
    np.testing.assert_array_equal(fi[:, :, ::-1], image)
    np.testing.assert_array_equal(ft["masks"][:, :, ::-1], target["masks"])
    for box, m in zip(ft["boxes"], ft["masks"], strict=True):
        ys, xs = np.nonzero(m)
        # shapes boxes are exact pixel extents, so the flipped box must equal the flipped mask's extent
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    back_image, back = hflip(fi, ft)
    np.testing.assert_array_equal(back["boxes"], target["boxes"])
    np.testing.assert_array_equal(back_image, image)


def test_loader_is_deterministic_and_resumes_exactly(shapes):
    def ids(loader, start, n):
        out = []
        for _, targets in loader.batches(start=start):
            out.append([(t["image_id"], t["boxes"].tobytes()) for t in targets])
            if len(out) == n:
                return out

    a = DataLoader(shapes, batch_size=3, flip_prob=0.5, seed=1, num_workers=2)
    b = DataLoader(shapes, batch_size=3, flip_prob=0.5, seed=1, num_workers=0)
    full = ids(a, 0, 12)  # crosses epoch boundaries (4 batches an epoch)
    assert full == ids(b, 0, 12)
    assert ids(a, 5, 7) == full[5:]
    assert ids(DataLoader(shapes, batch_size=3, flip_prob=0.5, seed=2), 0, 12) != full


def test_one_epoch_visits_every_image_once_grouped_by_aspect(coco):
    loader = DataLoader(coco, batch_size=4, seed=0)
    batches = loader.epoch_batches(0)
    assert sorted(i for b in batches for i in b) == list(range(len(coco)))
    for b in batches:
        assert len({coco.aspect_ratio(i) >= 1 for i in b}) == 1


# --- bad input ---------------------------------------------------------------------------------

@pytest.fixture
def tiny_copy(tmp_path):
    root = tmp_path / "d"
    generate_shapes(root, "train", num_images=3, seed=0)
    return root


def _edit(root, fn):
    p = root / "annotations" / "instances_train.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    return p


def test_malformed_json_names_the_file(tiny_copy):
    p = tiny_copy / "annotations" / "instances_train.json"
    p.write_text(p.read_text()[:-20])
    with pytest.raises(DataError, match=r"instances_train\.json: malformed JSON at line 1"):
        CocoDataset(*shapes_paths(tiny_copy, "train"))


def test_missing_image_names_the_file(tiny_copy):
    (tiny_copy / "images" / "train" / "000002.png").unlink()
    ds = CocoDataset(*shapes_paths(tiny_copy, "train"))
    with pytest.raises(DataError, match=r"000002\.png: image file not found \(image id 2"):
        ds[1]


def test_wrong_image_size_is_reported(tiny_copy):
    _edit(tiny_copy, lambda d: d["images"][0].update(width=100))
    with pytest.raises(DataError, match="000001.png: image is 128x128 but"):
        CocoDataset(*shapes_paths(tiny_copy, "train"))[0]


@pytest.mark.parametrize("field, value, message", [
    ("bbox", [120.0, 5.0, 40.0, 10.0], "outside"),
    ("bbox", [5.0, 5.0, 0.0, 10.0], "non-positive"),
    ("bbox", [5.0, 5.0, float("nan"), 10.0], "finite"),
    ("segmentation", {"size": [64, 64], "counts": "abc"}, "RLE size"),
    ("segmentation", [[1.0, 2.0, 3.0]], "polygon"),
    ("category_id", 99, "category_id 99"),
])
def test_inconsistent_annotation_names_file_and_id(tiny_copy, field, value, message):
    def corrupt(doc):
        doc["annotations"][0][field] = value
    _edit(tiny_copy, corrupt)
    ds = CocoDataset(*shapes_paths(tiny_copy, "train"))
    with pytest.raises(DataError, match=rf"instances_train\.json: annotation id 1 \(image 000001\.png\).*{message}"):
        ds.load_target(0)
    lenient = CocoDataset(*shapes_paths(tiny_copy, "train"), skip_bad=True)
    n_before = len(ds.coco.getAnnIds(imgIds=1))
    assert len(lenient.load_target(0)["boxes"]) == n_before - 1
    assert list(lenient.skipped) == [1] and message.split()[0] in lenient.skipped[1]


def test_missing_folder_and_file_are_reported(tmp_path, tiny_copy):
    with pytest.raises(DataError, match="image folder not found"):
        CocoDataset(tmp_path / "nope", tiny_copy / "annotations" / "instances_train.json")
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDataset(tiny_copy / "images" / "train", tmp_path / "none.json")
