"""Real COCO files for the bad-input tests: a few images and their annotations, copied to a tmp folder.

`source()` is the one place that says where the real files come from: coco128 when it is found,
else the 10-image sample shipped in the package (so these tests run on a fresh clone too).
Tests break the copies, never the originals.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from minimask import paths


def source():
    """(image folder, annotation file) of real COCO data: coco128, else the package's sample."""
    root, _ = paths.coco128_or_sample()
    return root / "train2017", root / "annotations" / "instances_train2017.json"

def coco_copy(dest, splits=(("train", 4),), source_dir=None):
    """Copy the first images of the source (by id, annotated ones) into `dest` as a COCO-format
    folder: dest/<split>/*.jpg and dest/annotations/instances_<split>.json; returns dest."""
    image_dir, ann_file = source_dir or source()
    doc = json.loads(Path(ann_file).read_text())
    annotated = {a["image_id"] for a in doc["annotations"]}
    images = sorted((im for im in doc["images"] if im["id"] in annotated), key=lambda im: im["id"])
    dest = Path(dest)
    for split, n in splits:
        chosen = images[:n]
        ids = {im["id"] for im in chosen}
        (dest / split).mkdir(parents=True, exist_ok=True)
        for im in chosen:
            shutil.copy(Path(image_dir) / im["file_name"], dest / split / im["file_name"])
        sub = {**{k: v for k, v in doc.items() if k not in ("images", "annotations")}, "images": chosen,
               "annotations": [a for a in doc["annotations"] if a["image_id"] in ids]}
        (dest / "annotations").mkdir(parents=True, exist_ok=True)
        (dest / "annotations" / f"instances_{split}.json").write_text(json.dumps(sub))
    return dest

def edit_annotations(root, split, fn):
    """Apply fn(doc) to dest/annotations/instances_<split>.json (to break it on purpose)."""
    p = Path(root) / "annotations" / f"instances_{split}.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    return p

def fingerprint(folder):
    """{relative path: sha256} of every file under `folder`: equal before and after = nothing touched."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
