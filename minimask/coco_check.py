"""The validation pass run when a COCO instances file is loaded, and the image-size check.

Checked:  structure (a JSON object; `images`, `categories` lists, `annotations` a list when present;
          each record a JSON object with its required fields), ids (integers, unique per table),
          references (every annotation's image_id names an image) and sizes (height and width
          positive integers). Each problem names the file, the record's index, its image id and
          its annotation id. Per-annotation geometry (box inside the image, RLE size, polygon) is
          checked when the item is read (`data.check_annotation`).
Sizes:    `resize_problem` says when an image is too thin for the model's resize (a side would
          become 0 pixels): found up front, naming the file, instead of crashing inside the transform.
Chapter: nbs/13_coco_data_and_evaluation.ipynb
"""

from __future__ import annotations

from .transform import resized_size

MAX_LISTED = 10   # problems shown in one message (the count says how many more)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _where(kind, i, rec):
    ids = []
    if kind == "annotations":
        ids.append(f"annotation id {rec.get('id')}")
    if kind in ("images", "annotations"):
        ids.append(f"image id {rec.get('id') if kind == 'images' else rec.get('image_id')}")
    if kind == "categories":
        ids.append(f"category id {rec.get('id')}")
    return f"{kind}[{i}] ({', '.join(ids)})"


def validate_coco(doc, path):
    """(problems, orphans): problems are fatal sentences; orphans maps the index of each annotation
    whose image_id names no image to its sentence (skippable: `--skip-bad` drops those)."""
    if not isinstance(doc, dict):
        return [f"{path}: expected a JSON object with 'images', 'annotations', 'categories'"], {}
    problems, orphans = [], {}
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            problems.append(f"{path}: missing or non-list '{key}'")
    if not isinstance(doc.get("annotations", []), list):
        problems.append(f"{path}: 'annotations' is not a list")
    if problems:
        return problems, {}
    required = {"images": ("id", "file_name", "height", "width"), "categories": ("id", "name"),
                "annotations": ("id", "image_id", "category_id", "bbox")}
    seen = {}
    for kind, fields in required.items():
        ids = seen[kind] = set()
        for i, rec in enumerate(doc.get(kind, [])):
            if not isinstance(rec, dict):
                problems.append(f"{path}: {kind}[{i}] is a {type(rec).__name__}, not an object")
                continue
            where = f"{path}: {_where(kind, i, rec)}"
            missing = [k for k in fields if k not in rec]
            if missing:
                problems.append(f"{where} lacks {missing}")
                continue
            if not _is_int(rec["id"]):
                problems.append(f"{where}: id {rec['id']!r} is not an integer")
            elif rec["id"] in ids:
                problems.append(f"{where}: duplicate id {rec['id']}")
            ids.add(rec["id"])
            if kind == "images":
                for side in ("height", "width"):
                    if not (_is_int(rec[side]) and rec[side] > 0):
                        problems.append(f"{where}: {side} {rec[side]!r} is not a positive integer")
                if not (isinstance(rec["file_name"], str) and rec["file_name"]):
                    problems.append(f"{where}: file_name {rec['file_name']!r} is not a file name")
    for i, ann in enumerate(doc.get("annotations", [])):
        if isinstance(ann, dict) and "image_id" in ann and ann["image_id"] not in seen["images"]:
            orphans[i] = f"{path}: {_where('annotations', i, ann)}: image_id {ann['image_id']!r} names no image"
    return problems, orphans


def report(problems, path):
    """One message for a list of problems: the first MAX_LISTED and how many more."""
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{path}: {len(problems)} problem(s) in the annotation file:\n  {shown}{more}"


def resize_problem(height, width, min_size, max_size):
    """None when an image of (height, width) resizes to at least 1x1 pixels, else a sentence saying why."""
    smallest = min(min_size) if isinstance(min_size, (tuple, list)) else min_size
    (h, w), _ = resized_size(height, width, smallest, max_size)
    if h >= 1 and w >= 1:
        return None
    return (f"a {width}x{height} image resizes to {w}x{h} pixels (min_size {min_size}, max_size {max_size}): "
            "too thin to process")
