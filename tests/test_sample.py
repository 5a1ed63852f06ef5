"""The COCO sample shipped in the package: the licence rules, the attribution, the size, the annotations.

Rules (the developers' guide): at most 10 coco128 images whose COCO licence is 4 ("Attribution License",
CC BY 2.0) or 7 ("No known copyright restrictions"), under 2 MB in all, with their original annotations
and an attribution file; image 544 (the only eligible image with a crowd RLE) included. When coco128
is present the sample is checked against it record by record, and `tools/make_sample.py` must
reproduce it byte for byte.
"""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from minimask import paths
from minimask.data import CocoDataset, coco_paths

SAMPLE = paths.SAMPLE_DIR
ANN = SAMPLE / "annotations" / "instances_train2017.json"
TOOL = Path(__file__).resolve().parent.parent / "tools" / "make_sample.py"
ALLOWED = {4: ("Attribution License", "http://creativecommons.org/licenses/by/2.0/"),
           7: ("No known copyright restrictions", "http://flickr.com/commons/usage/")}


@pytest.fixture(scope="module")
def doc():
    return json.loads(ANN.read_text())


@pytest.fixture(scope="module")
def coco128_doc():
    try:
        root = paths.coco128_dir()
    except FileNotFoundError as e:
        pytest.skip(f"coco128 not available to compare with: {e}")
    return root, json.loads((root / "annotations" / "instances_train2017.json").read_text())


def test_sample_is_inside_the_package_and_small():
    assert SAMPLE.parent == Path(paths.__file__).resolve().parent
    files = [f for f in SAMPLE.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    assert 0 < total < 2_000_000, f"the sample is {total} bytes"
    jpgs = sorted((SAMPLE / "train2017").glob("*.jpg"))
    assert 1 <= len(jpgs) <= 10
    # nothing else ships in the folder: images, the instances JSON, the attribution file
    assert sorted(f.relative_to(SAMPLE).as_posix() for f in files) == sorted(
        ["ATTRIBUTION.md", "annotations/instances_train2017.json"] + [f"train2017/{j.name}" for j in jpgs])


def test_every_image_has_an_allowed_licence_and_matches_its_record(doc):
    lic = {entry["id"]: entry for entry in doc["licenses"]}
    files = {p.name for p in (SAMPLE / "train2017").glob("*.jpg")}
    assert files == {im["file_name"] for im in doc["images"]}
    for im in doc["images"]:
        assert im["license"] in ALLOWED, (im["id"], lic[im["license"]]["name"])
        assert (lic[im["license"]]["name"], lic[im["license"]]["url"]) == ALLOWED[im["license"]]
        with Image.open(SAMPLE / "train2017" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"]), im["file_name"]


def test_attribution_lists_each_image_with_url_and_licence(doc):
    text = (SAMPLE / "ATTRIBUTION.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    assert len(rows) == len(doc["images"])
    for im in doc["images"]:
        name, url = ALLOWED[im["license"]]
        row = next((r for r in rows if r.startswith(f"| {im['file_name']} |")), None)
        assert row is not None, f"{im['file_name']} missing from ATTRIBUTION.md"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells == [im["file_name"], str(im["id"]), im["flickr_url"], name, url]
        assert im["flickr_url"].startswith("http://farm") and "staticflickr.com" in im["flickr_url"]


def test_annotations_are_whole_coco_records(doc):
    assert set(doc) == {"info", "licenses", "categories", "images", "annotations"}
    assert len(doc["categories"]) == 80
    ids = {im["id"] for im in doc["images"]}
    assert all(a["image_id"] in ids for a in doc["annotations"])
    keys = {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"}
    assert all(keys <= set(a) for a in doc["annotations"])
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert 544 in ids and any(a["image_id"] == 544 and isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert len({a["category_id"] for a in doc["annotations"]}) >= 10   # varied categories for the pictures


def test_sample_reads_as_a_coco_dataset():
    ds = CocoDataset(*coco_paths(SAMPLE, "train2017"))
    assert len(ds) == len(list((SAMPLE / "train2017").glob("*.jpg"))) and ds.num_classes == 81
    t = ds.load_target(ds.ids.index(544))
    assert t["iscrowd"].sum() == 1 and t["masks"].shape[0] == len(t["boxes"]) > 10


def test_sample_equals_coco128_for_its_images(doc, coco128_doc):
    root, full = coco128_doc
    for k in ("info", "licenses", "categories"):
        assert doc[k] == full[k], k
    ids = {im["id"] for im in doc["images"]}
    assert doc["images"] == [im for im in full["images"] if im["id"] in ids]
    assert doc["annotations"] == [a for a in full["annotations"] if a["image_id"] in ids]
    for im in doc["images"]:
        ours = (SAMPLE / "train2017" / im["file_name"]).read_bytes()
        theirs = (root / "train2017" / im["file_name"]).read_bytes()
        assert hashlib.sha256(ours).digest() == hashlib.sha256(theirs).digest(), im["file_name"]


def test_make_sample_reproduces_the_shipped_sample(tmp_path, coco128_doc):
    root, _ = coco128_doc
    spec = importlib.util.spec_from_file_location("make_sample", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.write(root, tmp_path)
    made = sorted(f.relative_to(tmp_path).as_posix() for f in tmp_path.rglob("*") if f.is_file())
    shipped = sorted(f.relative_to(SAMPLE).as_posix() for f in SAMPLE.rglob("*") if f.is_file())
    assert made == shipped
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (SAMPLE / rel).read_bytes(), rel
    # the tool refuses an image whose licence may not be shipped (image 9: BY-NC-ND)
    with pytest.raises(SystemExit, match="licence"):
        tool.build(root, (9, 544))


def _fake_coco128(data):
    (data / "coco128" / "train2017").mkdir(parents=True)
    (data / "coco128" / "annotations").mkdir()
    return data / "coco128"


def test_coco128_or_sample_prefers_coco128_and_says_which(tmp_path, monkeypatch):
    fake = _fake_coco128(tmp_path / "data")
    assert paths.coco128_or_sample(tmp_path / "data") == (fake, "coco128")          # explicit
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "data"))
    assert paths.coco128_or_sample() == (fake, "coco128")                           # $MINIMASK_DATA
    assert paths.coco128_or_sample(tmp_path / "nothing") == (SAMPLE, "sample")      # not there: the sample


def test_minimask_data_set_to_an_empty_folder_means_the_sample_even_with_shared_nearby(tmp_path, monkeypatch):
    # CI has ../shared/data beside the clone; a notebook runs from a folder below one that holds shared/data.
    _fake_coco128(tmp_path / "shared" / "data")
    (tmp_path / "repo" / "nbs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "nbs")
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert paths.coco128_or_sample()[1] == "coco128"          # found automatically (here or beside the repo)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "empty"))
    assert paths.coco128_or_sample() == (SAMPLE, "sample")    # the variable is the only place looked at


def test_preset_coco128_does_not_fall_back_to_the_sample(tmp_path, monkeypatch, capsys):
    from minimask import train as T

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "empty"))
    cfg = T.config_from_args(["--preset", "coco128", "--output-dir", str(tmp_path / "run")])
    with pytest.raises(FileNotFoundError, match="coco128 not found") as info:
        T.resolve_data_dir(cfg)
    assert str(tmp_path / "empty" / "coco128") in str(info.value) and str(SAMPLE) in str(info.value)
    assert T.main(["--preset", "coco128", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: coco128 not found") and "sample" in err
    assert not (tmp_path / "run" / "model_final.npz").exists()
