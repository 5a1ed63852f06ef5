"""A user's data is never overwritten, bad data is reported by file and record (issue 14: problems 1 and 6).

Real COCO files (coco_files.py) are copied to a tmp folder and broken there.
"""

import json

import numpy as np
import pytest
from coco_files import coco_copy, edit_annotations, fingerprint
from PIL import Image

from minimask import evaluate, predict
from minimask.data import CocoDataset, coco_paths
from minimask.shapes import generate_shapes
from minimask.train import TrainConfig, train

TINY = dict(num_train_images=4, num_val_images=2, image_size=64, min_size=64, max_size=64, width=16,
            batch_size=2, iterations=2, milestones=(4,), warmup_iters=1, checkpoint_every=2, log_every=1,
            eval_limit=2, num_workers=1)


@pytest.fixture
def user_coco(tmp_path):
    """A user's COCO-format dataset laid out with the split names shapes also uses (train, val)."""
    return coco_copy(tmp_path / "my-coco", splits=(("train", 3), ("val", 2)))


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    return train(TrainConfig(data_dir=str(tmp / "shapes"), output_dir=str(tmp / "run"), **TINY), progress=False)


# --- problem 1: the shapes generator never writes into a user's folder ------------------------------

def test_train_without_dataset_coco_leaves_a_coco_folder_alone(user_coco, tmp_path):
    before = fingerprint(user_coco)
    with pytest.raises(ValueError, match=f"{user_coco}: not a folder of generated shapes"):
        train(TrainConfig(data_dir=str(user_coco), output_dir=str(tmp_path / "run"), **TINY), progress=False)
    assert fingerprint(user_coco) == before


def test_evaluate_a_shapes_checkpoint_on_a_coco_folder_leaves_it_alone(user_coco, shapes_run, tmp_path):
    before = fingerprint(user_coco)
    with pytest.raises(ValueError, match=f"{user_coco}: not a folder of generated shapes"):
        evaluate.main(["--checkpoint", str(shapes_run["run_dir"] / "model_final.npz"), "--data-dir", str(user_coco),
                       "--output-dir", str(tmp_path / "ev")])
    assert fingerprint(user_coco) == before


def test_generator_writes_only_where_it_wrote_before(tmp_path):
    mine = tmp_path / "mine"
    generate_shapes(mine, "train", num_images=2)
    generate_shapes(mine, "val", num_images=2)                    # its own folder: fine
    (mine / ".minimask_shapes").unlink()                           # as an older version left it
    generate_shapes(mine, "test", num_images=1)                   # the record in its annotations suffices
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{other}: not a folder of generated shapes"):
        generate_shapes(other, "train", num_images=2)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


# --- problem 6: --skip-bad reports, the README's evaluate works, thin images are named ----------------

def test_skip_bad_skips_a_missing_image_and_saves_what_and_why(user_coco, tmp_path, capsys):
    missing = sorted((user_coco / "train").iterdir())[0]
    missing.unlink()
    edit_annotations(user_coco, "train", lambda d: d["annotations"][-1].update(bbox=[600.0, 5.0, 300.0, 10.0]))
    result = train(TrainConfig(dataset="coco", data_dir=str(user_coco), output_dir=str(tmp_path / "run"),
                               skip_bad=True, **TINY), progress=False)
    assert "--skip-bad: skipped 1 annotation(s) and 1 image(s)" in capsys.readouterr().out
    report = json.loads((result["run_dir"] / "skipped.json").read_text())
    assert report["count"] == 2
    assert any(missing.name in r["reason"] and r["annotation_id"] is None for r in report["skipped"])
    assert any("outside" in r["reason"] and r["annotation_id"] is not None for r in report["skipped"])


def test_readme_evaluate_command_accepts_model_final(shapes_run, tmp_path, capsys):
    final = shapes_run["run_dir"] / "model_final.npz"
    assert evaluate.main(["--checkpoint", str(final), "--output-dir", str(tmp_path / "ev")]) == 0
    assert "segm AP" in capsys.readouterr().out


def _thin_image(root, split):
    """Make the first image of a split 1000x3 pixels (and say so in the JSON)."""
    doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    im = doc["images"][0]
    Image.fromarray(np.zeros((3, 1000, 3), np.uint8)).save(root / split / im["file_name"])
    edit_annotations(root, split, lambda d: (d["images"][0].update(width=1000, height=3),
                                             d.update(annotations=[a for a in d["annotations"]
                                                                   if a["image_id"] != im["id"]])))
    return root / split / im["file_name"]


def test_degenerate_image_is_named_not_crashed_on(user_coco, tmp_path, shapes_run):
    thin = _thin_image(user_coco, "train")
    with pytest.raises(ValueError, match=f"{thin}.*too thin"):
        train(TrainConfig(dataset="coco", data_dir=str(user_coco), output_dir=str(tmp_path / "run"), **TINY),
              progress=False)
    with pytest.raises(ValueError, match=f"{thin}.*too thin"):
        predict.main([str(thin), "--checkpoint", str(shapes_run["run_dir"] / "model_final.npz"),
                      "--output-dir", str(tmp_path / "pr")])


# --- the validation pass when a COCO file is loaded -------------------------------------------------

@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[3\] \(image id \d+\): duplicate id"),
    (lambda d: d["annotations"][0].update(image_id=123456),
     r"annotations\[0\] \(annotation id \d+, image id 123456\): image_id 123456 names no image"),
    (lambda d: d["images"][1].update(height=0), r"images\[1\] \(image id \d+\): height 0 is not a positive"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"annotation id \d+, image id \d+\): duplicate"),
])
def test_validation_names_file_image_and_annotation(user_coco, breakage, message):
    ann = edit_annotations(user_coco, "train", breakage)
    with pytest.raises(ValueError, match=rf"{ann}.*{message}"):
        CocoDataset(*coco_paths(user_coco, "train"))


def test_orphan_annotations_are_skippable(user_coco):
    edit_annotations(user_coco, "train", lambda d: d["annotations"][0].update(image_id=123456))
    ds = CocoDataset(*coco_paths(user_coco, "train"), skip_bad=True)
    (record,) = ds.skipped_records.values()
    assert record["image_id"] == 123456 and "names no image" in record["reason"]
