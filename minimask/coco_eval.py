"""COCOeval of a model: run it over a dataset, write COCO results, score boxes and masks with pycocotools.

Detections are written in COCO's results format — `bbox` as [x, y, w, h] in original-image pixels,
`segmentation` as RLE of the mask thresholded at 0.5, `category_id` mapped back from contiguous
labels — and scored by COCOeval, which prints its standard 12-number summary per task:
AP@[.5:.95], AP@.5, AP@.75, AP small/medium/large, AR@1, AR@10, AR@100, AR small/medium/large.
The training loop (train.py) and the evaluation CLI (evaluate.py) both import it from here.
Chapter: nbs/13_coco_data_and_evaluation.ipynb
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from .backend import module_of, to_device, to_host
from .distributed import shard
from .tape import no_grad

STAT_NAMES = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
]


def detections_to_coco(detection, image_id, label_to_cat_id, mask_threshold=0.5):
    """One image's model output (boxes, labels, scores, masks (N, 1, H, W)) -> list of COCO result dicts."""
    boxes = to_host(detection["boxes"]).astype(np.float64)
    scores = to_host(detection["scores"]).astype(np.float64)
    labels = to_host(detection["labels"]).astype(np.int64)
    masks = detection.get("masks")
    results = []
    rles = []
    if masks is not None and len(boxes):
        binary = (to_host(masks)[:, 0] > mask_threshold).astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for i in range(len(boxes)):
        x1, y1, x2, y2 = boxes[i]
        r = {"image_id": int(image_id), "category_id": int(label_to_cat_id[labels[i]]),
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])}
        if len(rles):
            rle = dict(rles[i])
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
        results.append(r)
    return results


def predict_dataset(model, dataset, batch_size=2, progress=True, limit=None, comm=None):
    """Run `model` (eval mode) over `dataset`; returns the list of COCO result dicts.

    Each batch of images is uploaded once to the model's device; the detections come back to the
    host (for COCOeval) in `detections_to_coco`.
    comm (distributed.py): with several processes each predicts a contiguous share of the batches —
    whole batches of the one-process order, so every image is padded with the same neighbours — and
    rank 0 gathers the results in that order (the one-process list exactly); the others get None.
    """

    model.eval()
    xp = module_of(model)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    starts = list(range(0, n, batch_size))
    if comm is not None:
        starts = shard(starts, comm.rank, comm.size)
    results = []
    lead = comm is None or comm.rank == 0
    with no_grad():
        for start in tqdm(starts, desc="evaluate", disable=not (progress and lead), unit="batch"):
            idx = list(range(start, min(n, start + batch_size)))
            images = to_device([dataset[i][0] for i in idx], xp)
            outputs = model(images)
            for i, det in zip(idx, outputs, strict=True):
                results.extend(detections_to_coco(det, dataset.ids[i], dataset.label_to_cat_id))
    if comm is None or comm.size == 1:
        return results
    gathered = comm.gather(results)   # rank order = batch order
    return [r for part in gathered for r in part] if lead else None


def coco_evaluate(coco_gt, results, image_ids, iou_types=("bbox", "segm"), verbose=True):
    """COCOeval for each IoU type; returns {iou_type: {stat name: value}} (the 12 standard numbers).

    With no detections at all every number is 0 (COCOeval itself refuses an empty result list).
    """
    out = {}
    for iou_type in iou_types:
        res = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not res:
            stats = [0.0] * 12
            if verbose:
                print(f"{iou_type}: no detections, every AP/AR is 0")
        else:
            coco_dt = _quiet(coco_gt.loadRes, res)  # it prints progress lines of its own
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.params.imgIds = list(image_ids)
            if verbose:
                print(f"\n=== COCO {iou_type} ===")
                _run_cocoeval(ev)
            else:
                _quiet(_run_cocoeval, ev)
            stats = [float(s) for s in ev.stats]
        out[iou_type] = dict(zip(STAT_NAMES, stats, strict=True))
    return out


def _run_cocoeval(ev):
    ev.evaluate()
    ev.accumulate()
    ev.summarize()  # prints the 12-number table


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def evaluate_model(model, dataset, batch_size=2, out_dir=None, progress=True, verbose=True, limit=None, comm=None):
    """Predict on every image of `dataset`, run COCOeval for bbox and segm, and optionally write
    `results.json` (detections) and `metrics.json` (the 12 numbers per task) into `out_dir`.

    comm (distributed.py): the processes share the predictions (`predict_dataset`); rank 0 alone
    runs COCOeval and writes, and every rank returns its metrics."""
    results = predict_dataset(model, dataset, batch_size=batch_size, progress=progress, limit=limit, comm=comm)
    if comm is not None and comm.rank != 0:
        return comm.bcast(None)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    metrics = coco_evaluate(dataset.coco, results, dataset.ids[:n], verbose=verbose)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics if comm is None else comm.bcast(metrics)
