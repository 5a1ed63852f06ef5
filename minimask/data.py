"""COCO-format data: reading, checking, flipping, batching and prefetching.

A dataset item is `(image, target)`:
    image   float32 (3, H, W) in [0, 1], RGB
    target  dict with
        boxes     float32 (N, 4)  x1 y1 x2 y2 in pixels (COCO's [x, y, w, h] converted)
        labels    int64 (N,)      contiguous class ids 1..K (0 is background); `label_to_cat_id` maps back
        masks     uint8 (N, H, W) instance masks decoded by pycocotools (polygons and RLE)
        iscrowd   bool (N,)       crowd regions: never positives, never negatives (the matcher ignores them)
        image_id  int             COCO image id
Images without annotations are kept (N = 0). Bad data — malformed JSON, a missing image file, an
annotation whose box or mask does not fit its image — raises `DataError` naming the file and the
annotation id; with `skip_bad=True` such annotations (or images) are skipped and recorded in
`skipped_records` instead (found up front where the JSON alone tells: missing files, boxes, ids).
Loading a file runs the validation pass of coco_check.py (structure, ids, references, sizes).

Batching: `DataLoader` groups images by aspect ratio (landscape / portrait, as torchvision's
GroupedBatchSampler) so padded batches waste little, and decodes the next batches in background
threads while the model trains. Its order is a pure function of (seed, epoch): a resumed run sees
exactly the batches the uninterrupted run would have seen.
Chapter: nbs/13_coco_data_and_evaluation.ipynb
"""

from __future__ import annotations

import json
import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .coco_check import report, resize_problem, validate_coco
from .distributed import shard
from .errors import MinimaskError

BOX_TOLERANCE = 1.0  # pixels a COCO box may stick out of its image before it counts as inconsistent


class DataError(MinimaskError):
    """A problem with the data on disk; the message names the file (and annotation id)."""


def load_coco_json(path, skip_bad=False):
    """Read and validate an instances JSON (coco_check.validate_coco) with errors naming the file
    and record, returning a `pycocotools.coco.COCO` index. With `skip_bad`, annotations of images
    that do not exist are dropped (listed in `.orphans`) instead of stopping."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    problems, orphans = validate_coco(doc, path)   # structure, ids, references, sizes
    if problems:
        raise DataError(problems[0] if len(problems) == 1 else report(problems, path))
    if orphans and not skip_bad:
        raise DataError(report(list(orphans.values()), path))
    doc.setdefault("annotations", [])
    dropped = [doc["annotations"][i] for i in orphans]
    doc["annotations"] = [a for i, a in enumerate(doc["annotations"]) if i not in orphans]
    coco = COCO()
    coco.dataset = doc
    coco.createIndex()  # pycocotools prints a line here; it is its own progress message
    coco.orphans = [(a, orphans[i]) for i, a in zip(orphans, dropped, strict=True)]
    return coco


def check_annotation(ann, height, width):
    """Return None when the annotation fits an image of (height, width), else a sentence saying why."""
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(np.isfinite(v) for v in bbox)):
        return f"bbox {bbox!r} is not 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has non-positive width or height"
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return f"bbox {bbox} lies outside the {width}x{height} image"
    seg = ann.get("segmentation")
    if seg is None:
        return "no segmentation"
    if isinstance(seg, dict):
        size = seg.get("size")
        if list(size or []) != [height, width]:
            return f"RLE size {size} differs from the image size [{height}, {width}]"
    elif isinstance(seg, list):
        if not seg or any(len(p) < 6 or len(p) % 2 for p in seg):
            return "polygon with fewer than 3 points or an odd number of coordinates"
    else:
        return f"segmentation of unknown type {type(seg).__name__}"
    return None


def decode_mask(ann, height, width):
    """COCO segmentation (polygons, uncompressed or compressed RLE) -> uint8 (H, W) mask."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


class CocoDataset:
    """Images + instances JSON read through pycocotools. See the module docstring for the item format."""

    def __init__(self, image_dir, ann_file, skip_bad=False, remove_images_without_annotations=False):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image folder not found (annotations: {self.ann_file})")
        self.coco = load_coco_json(self.ann_file, skip_bad=skip_bad)
        self.skip_bad = skip_bad
        self.skipped = {}  # annotation id (or "image <id>") -> reason, filled as items are read
        self.skipped_records = {}  # same keys -> {file, image_id, annotation_id, image_file, reason}
        self._lock = threading.Lock()
        for ann, reason in self.coco.orphans:
            self._bad(ann["id"], reason, ann["image_id"], ann["id"])
        cats = sorted(self.coco.cats)
        self.cat_ids = cats
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cats)}
        self.label_to_cat_id = np.array([0] + cats, dtype=np.int64)  # label 0 = background
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in cats]
        ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if self.coco.getAnnIds(imgIds=i)]
        self.ids = ids
        if skip_bad:   # found up front, so the report is complete before training starts
            for ann in self.coco.dataset["annotations"]:
                info = self.coco.imgs[ann["image_id"]]
                reason = self._problem(ann, info["height"], info["width"])
                if reason is not None:
                    self._bad(ann["id"], reason, info["id"], ann["id"])
            paths = {i: self.image_dir / self.coco.imgs[i]["file_name"] for i in self.ids}
            self.exclude({i: f"{p}: image file not found" for i, p in paths.items() if not p.is_file()})

    def exclude(self, reasons):
        """Drop images from the dataset (with --skip-bad), recording why: {image id: reason}."""
        self.ids = [i for i in self.ids if i not in reasons]
        for i, reason in reasons.items():
            self._bad(f"image {i}", reason, i, None)

    def check_sizes(self, min_size, max_size):
        """Find images the resize would make 0 pixels thin: DataError naming them (or skip them)."""
        bad = {}
        for i in self.ids:
            info = self.coco.imgs[i]
            reason = resize_problem(info["height"], info["width"], min_size, max_size)
            if reason is not None:
                bad[i] = f"{self.image_dir / info['file_name']} (image id {i} in {self.ann_file}): {reason}"
        if bad and not self.skip_bad:
            raise DataError(report(list(bad.values()), self.ann_file))
        self.exclude(bad)

    @property
    def num_classes(self):
        """K + 1: the foreground classes plus background."""
        return len(self.cat_ids) + 1

    def __len__(self):
        return len(self.ids)

    def image_info(self, index):
        return self.coco.imgs[self.ids[index]]

    def aspect_ratio(self, index):
        info = self.image_info(index)
        return info["width"] / info["height"]

    def _bad(self, key, reason, image_id, ann_id):
        info = self.coco.imgs.get(image_id, {})
        record = {"file": str(self.ann_file), "image_id": image_id, "annotation_id": ann_id,
                  "image_file": info.get("file_name"), "reason": reason}
        with self._lock:
            self.skipped[key] = reason
            self.skipped_records[key] = record

    def load_image(self, index):
        """uint8 (H, W, 3) RGB; checks the file against the JSON's width and height."""
        info = self.image_info(index)
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DataError(f"{path}: image file not found (image id {info['id']} in {self.ann_file})")
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"{path}: cannot decode image ({e})") from None
        if arr.shape[:2] != (info["height"], info["width"]):
            raise DataError(
                f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but {self.ann_file} says "
                f"{info['width']}x{info['height']} (image id {info['id']})"
            )
        return arr

    def _problem(self, ann, h, w):
        reason = check_annotation(ann, h, w)
        if reason is None and ann["category_id"] not in self.cat_id_to_label:
            reason = f"category_id {ann['category_id']} is not among the categories"
        return reason

    def load_target(self, index):
        info = self.image_info(index)
        h, w = info["height"], info["width"]
        boxes, labels, masks, crowd = [], [], [], []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"])):
            reason = self._problem(ann, h, w)
            if reason is None:
                m = decode_mask(ann, h, w)
                if m.shape != (h, w):
                    reason = f"mask decodes to {m.shape}, image is {(h, w)}"
            if reason is not None:
                where = f"{self.ann_file}: annotation id {ann['id']} (image {info['file_name']})"
                if not self.skip_bad:
                    raise DataError(f"{where}: {reason}")
                self._bad(ann["id"], reason, info["id"], ann["id"])
                continue
            x, y, bw, bh = ann["bbox"]
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)])
            labels.append(self.cat_id_to_label[ann["category_id"]])
            masks.append(m)
            crowd.append(bool(ann.get("iscrowd", 0)))
        return {
            "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.array(labels, dtype=np.int64),
            "masks": np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8),
            "iscrowd": np.array(crowd, dtype=bool),
            "image_id": int(info["id"]),
        }

    def __getitem__(self, index):
        image = self.load_image(index)
        target = self.load_target(index)
        return to_chw_float(image), target


def to_chw_float(image_hwc_uint8):
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return np.ascontiguousarray(image_hwc_uint8.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def hflip(image, target):
    """Mirror an item left-right: image columns reversed, x1' = W - x2, x2' = W - x1, masks mirrored."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].copy()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    target["masks"] = np.ascontiguousarray(target["masks"][..., ::-1])
    return np.ascontiguousarray(image[..., ::-1]), target


def grouped_batches(aspect_ratios, batch_size, rng, drop_last=False):
    """One epoch of batches (lists of indices): shuffled, each batch from one aspect-ratio group.

    Group 0 is landscape or square (w/h >= 1), group 1 portrait, as torchvision's
    GroupedBatchSampler with two bins. Leftovers of each group form a last, smaller batch unless
    `drop_last`.
    """
    order = rng.permutation(len(aspect_ratios))
    pending = {0: [], 1: []}
    batches = []
    for i in order:
        g = 0 if aspect_ratios[i] >= 1.0 else 1
        pending[g].append(int(i))
        if len(pending[g]) == batch_size:
            batches.append(pending[g])
            pending[g] = []
    if not drop_last:
        batches.extend(b for b in pending.values() if b)
    return batches


class DataLoader:
    """Batches of `(images, targets)` lists, decoded ahead of time in background threads.

    The order of epoch e is `grouped_batches(..., rng=default_rng([seed, e]))`, and whether item i
    of epoch e is flipped is drawn from `default_rng([seed, e, i])`: both depend on nothing else,
    so `batches(start=k)` resumes an interrupted run exactly.
    `rank`, `world_size`: a process of a data-parallel run loads only its contiguous share of each
    batch (`distributed.shard`; `batch_size` is the global batch, every rank follows the same order).
    """

    def __init__(self, dataset, batch_size=2, shuffle=True, flip_prob=0.0, seed=0, num_workers=2, prefetch=4,
                 aspect_ratio_grouping=True, drop_last=False, rank=0, world_size=1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        self.flip_prob = flip_prob
        self.seed = seed
        self.num_workers = max(0, num_workers)
        self.prefetch = max(1, prefetch)
        self.drop_last = drop_last
        n = len(dataset)
        self._ratios = (
            np.array([dataset.aspect_ratio(i) for i in range(n)]) if aspect_ratio_grouping else np.ones(n)
        )

    def epoch_batches(self, epoch):
        if not self.shuffle:
            idx = list(range(len(self.dataset)))
            return [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        return grouped_batches(self._ratios, self.batch_size, np.random.default_rng([self.seed, epoch]),
                               self.drop_last)

    def __len__(self):
        if self.drop_last or not self.shuffle:
            return len(self.epoch_batches(0))
        return math.ceil(len(self.dataset) / self.batch_size)

    def load(self, epoch, index):
        image, target = self.dataset[index]
        if self.flip_prob > 0 and np.random.default_rng([self.seed, epoch, index]).random() < self.flip_prob:
            image, target = hflip(image, target)
        return image, target

    def _schedule(self, start_batch=0, epochs=None):
        """Yield (epoch, batch indices) from global batch number `start_batch` on."""
        epoch, skipped = 0, 0
        while epochs is None or epoch < epochs:
            batches = self.epoch_batches(epoch)
            if not batches:
                return
            if skipped + len(batches) <= start_batch:
                skipped += len(batches)
                epoch += 1
                continue
            for b in batches[max(0, start_batch - skipped):]:
                yield epoch, shard(b, self.rank, self.world_size)   # this process's share (all of it in one)
            skipped += len(batches)
            epoch += 1

    def batches(self, start=0, epochs=None):
        """Iterate batches from global batch number `start` (endlessly when `epochs` is None)."""
        schedule = self._schedule(start, epochs)
        if self.num_workers == 0:
            for epoch, b in schedule:
                yield self._collate([self.load(epoch, i) for i in b])
            return
        yield from self._prefetched(schedule)

    def __iter__(self):
        return self.batches(start=0, epochs=1)

    @staticmethod
    def _collate(items):
        return [im for im, _ in items], [t for _, t in items]

    def _prefetched(self, schedule):
        """Run up to `prefetch` batches ahead on a thread pool (PIL and pycocotools decode without the GIL)."""
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="minimask-data")
        pending = queue.SimpleQueue()
        in_flight = 0
        try:
            for epoch, b in schedule:
                pending.put([pool.submit(self.load, epoch, i) for i in b])
                in_flight += 1
                if in_flight >= self.prefetch:
                    yield self._collate([f.result() for f in pending.get()])
                    in_flight -= 1
            while in_flight:
                yield self._collate([f.result() for f in pending.get()])
                in_flight -= 1
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def coco_paths(root, split):
    """(image_dir, ann_file) for the standard COCO layout root/{split}, root/annotations/instances_{split}.json."""
    root = Path(root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def shapes_paths(root, split):
    """(image_dir, ann_file) for a dataset written by `minimask.shapes.generate_shapes`."""
    root = Path(root)
    return root / "images" / split, root / "annotations" / f"instances_{split}.json"

