"""Benchmark: the main job against its torchvision peer — segm AP at equal training wall time, same data, same machine.

Usage:   python benchmarks/main_job_vs_peer.py [--runs 2] [--marks 2.5,5,8] [--workdir DIR] [--data DIR]
                                              [--quick] [--no-profile]
         (--quick: a smoke test of every code path, a few minutes: 32 train / 8 val images, marks 0.2,0.4,0.6,
          minimask checkpoints every 2 iterations)
Data:    the shapes folder `python -m minimask.train` writes (1000 train + 100 val 128x128 images, seed 0),
         generated here by the same call (builders.build_dataset with train.py's default flags) into
         <workdir>/shapes-data, or reused from --data DIR. Both trainers read these files, through the same
         reader (minimask's CocoDataset and DataLoader: same batches of 4, same horizontal flips p=0.5, 2
         decoding threads), so only the model and its framework differ.
Peer:    torchvision's MaskRCNN from scratch, torch.set_num_threads(2), as issue 17 describes it (`build_peer`,
         checked item by item in `check_peer`): a small CNN of conv3x3-BN-ReLU blocks (stem 16 ch stride 2,
         stages 32/64/128/256 of a stride-2 and a stride-1 block), an FPN of 64 channels on the four stages
         with no extra block (no P6), anchors (16, 32, 64, 128) x (0.5, 1, 2), RPN top-n 600/300 (train) and
         300/100 (test), 128 RoIs per image, TwoMLPHead(64*7*7, 256), MaskRCNNHeads(64, [64]*4, 1) with a
         64-channel predictor, 20 detections per image, min_size = max_size = 128, batch 4, SGD LR 0.02
         (momentum 0.9, weight decay 1e-4 on every parameter), linear warmup from 0.001x over 200 iterations,
         then constant. Its state_dict is saved at each mark: after a step, when the next step (at the
         running mean step time) would end past the mark, so the saved weights are those of the last step
         that ends at or before it.
minimask: `python -m minimask.train` with its defaults, plus --data-dir, --output-dir, --checkpoint-every 10
         and --time-limit-minutes <last mark>; a mark takes the last checkpoint whose logged training time
         (metrics.jsonl `time`) is at most the mark (benchmarks/train_shapes.py's logic, with the time
         counted from the start of training rather than from launch). The checkpoints cost ~2% of minimask's
         training time; that cost is counted against minimask. Checkpoints no mark needs are deleted as the
         run goes.
Time:    for both, training wall time from just before the first batch is fetched (data loading, forward,
         backward, optimizer, checkpoints), not start-up, data generation, or evaluation.
Scores:  after both trainings, every mark's weights are evaluated on the whole val split by the same code
         (predictions -> COCO results -> pycocotools COCOeval, minimask.coco_eval): segm AP@[.5:.95] and bbox AP.
Memory:  peak resident set (ru_maxrss from os.wait4) of each training subprocess, so the peaks are separate.
Runs:    the two trainers run one after the other, never together (run 1 peer first, run 2 minimask first,
         and so on); --runs N repeats the whole comparison and prints each run and the spread (min..max).
         Results go to <workdir>/results.json; a finished arm is kept there and skipped on a re-run.
Profile: then benchmarks/profile_step.py runs on the same folder and its table is printed (--no-profile: not).
Timings on a shared machine are meaningless: run it alone on a quiet machine (it takes ~20 minutes a run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_shapes import CheckpointPruner, read_metrics, score_marks  # noqa: E402  (benchmarks/ sibling)

from minimask.builders import build_dataset, build_model  # noqa: E402
from minimask.coco_eval import coco_evaluate, detections_to_coco  # noqa: E402
from minimask.data import DataLoader  # noqa: E402
from minimask.train import config_from_args  # noqa: E402

QUICK_DATA_FLAGS = ["--num-train-images", "32", "--num-val-images", "8"]
QUICK_MARKS = (0.2, 0.4, 0.6)
FULL_MARKS = (2.5, 5.0, 8.0)

# the peer, as issue 17 states it
PEER = dict(stem=16, widths=(32, 64, 128, 256), fpn_channels=64, anchor_sizes=(16, 32, 64, 128),
            aspect_ratios=(0.5, 1.0, 2.0), pre_nms_train=600, post_nms_train=300, pre_nms_test=300,
            post_nms_test=100, rois_per_image=128, representation=256, mask_layers=(64, 64, 64, 64),
            detections=20, size=128, batch=4, lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_iters=200,
            warmup_factor=0.001, threads=2)


# --- the peer: torchvision Mask R-CNN on a small CNN ------------------------------------------------

def build_peer(num_classes):
    """torchvision MaskRCNN as PEER says; `num_classes` includes the background."""
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

    def block(cin, cout, stride):   # conv3x3-BN-ReLU
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    P = PEER
    layers = {"stem": block(3, P["stem"], 2)}
    cin = P["stem"]
    for i, w in enumerate(P["widths"]):
        layers[f"layer{i + 1}"] = nn.Sequential(block(cin, w, 2), block(w, w, 1))
        cin = w
    body = nn.Sequential()
    for name, m in layers.items():
        body.add_module(name, m)
    names = {f"layer{i + 1}": str(i) for i in range(4)}
    backbone = BackboneWithFPN(body, names, list(P["widths"]), P["fpn_channels"])
    # BackboneWithFPN adds a max-pooled P6 by default; the peer has none: an FPN with no extra block
    backbone.fpn = FeaturePyramidNetwork(list(P["widths"]), P["fpn_channels"], extra_blocks=None)
    levels = list(names.values())
    C = P["fpn_channels"]
    return MaskRCNN(
        backbone, num_classes=None, min_size=P["size"], max_size=P["size"],
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in P["anchor_sizes"]),
                                             (P["aspect_ratios"],) * len(P["anchor_sizes"])),
        rpn_pre_nms_top_n_train=P["pre_nms_train"], rpn_post_nms_top_n_train=P["post_nms_train"],
        rpn_pre_nms_top_n_test=P["pre_nms_test"], rpn_post_nms_top_n_test=P["post_nms_test"],
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2), box_head=TwoMLPHead(C * 7 * 7, P["representation"]),
        box_predictor=FastRCNNPredictor(P["representation"], num_classes),
        box_batch_size_per_image=P["rois_per_image"], box_detections_per_img=P["detections"],
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2), mask_head=MaskRCNNHeads(C, list(P["mask_layers"]), 1),
        mask_predictor=MaskRCNNPredictor(P["mask_layers"][-1], C, num_classes))


def check_peer(model):
    """[(item, wanted, built)] read back from the built model, one row per line of the issue; raises on a mismatch."""
    from torch import nn

    P, body, rpn, rh = PEER, model.backbone.body, model.rpn, model.roi_heads
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    stages = [body[k] for k in ("layer1", "layer2", "layer3", "layer4")]
    blocks_ok = all(isinstance(b[0], nn.Conv2d) and b[0].kernel_size == (3, 3) and isinstance(b[1], nn.BatchNorm2d)
                    and isinstance(b[2], nn.ReLU) for s in [[body.stem]] + [list(s) for s in stages] for b in s)
    rows = [
        ("blocks conv3x3-BN-ReLU", True, blocks_ok),
        ("stem channels, stride", (P["stem"], 2), (body.stem[0].out_channels, body.stem[0].stride[0])),
        ("stage widths", P["widths"], tuple(s[0][0].out_channels for s in stages)),
        ("stage strides (2, 1) each", ((2, 1),) * 4, tuple((s[0][0].stride[0], s[1][0].stride[0]) for s in stages)),
        ("backbone convs", 9, len(convs)),
        ("FPN channels", P["fpn_channels"], model.backbone.out_channels),
        ("FPN extra block (P6)", None, model.backbone.fpn.extra_blocks),
        ("anchor sizes", tuple((s,) for s in P["anchor_sizes"]), tuple(rpn.anchor_generator.sizes)),
        ("anchor ratios", (P["aspect_ratios"],) * 4, tuple(tuple(r) for r in rpn.anchor_generator.aspect_ratios)),
        ("RPN pre/post NMS train", (P["pre_nms_train"], P["post_nms_train"]),
         (rpn._pre_nms_top_n["training"], rpn._post_nms_top_n["training"])),
        ("RPN pre/post NMS test", (P["pre_nms_test"], P["post_nms_test"]),
         (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"])),
        ("RoIs per image", P["rois_per_image"], rh.fg_bg_sampler.batch_size_per_image),
        ("box head fc6, fc7", ((P["fpn_channels"] * 49, P["representation"]), (P["representation"],) * 2),
         ((rh.box_head.fc6.in_features, rh.box_head.fc6.out_features),
          (rh.box_head.fc7.in_features, rh.box_head.fc7.out_features))),
        ("mask head convs", P["mask_layers"], tuple(m.out_channels for m in rh.mask_head.modules()
                                                    if isinstance(m, nn.Conv2d))),
        ("detections per image", P["detections"], rh.detections_per_img),
        ("input min/max size", ((P["size"],), P["size"]), (tuple(model.transform.min_size), model.transform.max_size)),
    ]
    bad = [r for r in rows if r[1] != r[2]]
    if bad:
        raise AssertionError(f"the peer is not the one issue 17 describes: {bad}")
    return rows


def num_parameters(model):
    return sum(p.numel() for p in model.parameters())


def to_torch_batch(images, targets):
    import torch

    return ([torch.from_numpy(im) for im in images],
            [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"]),
              "masks": torch.from_numpy(t["masks"])} for t in targets])


def peer_step(model, optimizer, scheduler, images, targets):
    """One SGD step; returns the losses as floats."""
    import torch

    imgs, tgts = to_torch_batch(images, targets)
    losses = model(imgs, tgts)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"peer: non-finite loss {({k: float(v) for k, v in losses.items()})}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def peer_optimizer(model):
    import torch

    P = PEER
    opt = torch.optim.SGD(model.parameters(), lr=P["lr"], momentum=P["momentum"], weight_decay=P["weight_decay"])
    warm = lambda it: min(1.0, P["warmup_factor"] + (1 - P["warmup_factor"]) * it / P["warmup_iters"])  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warm)


def train_peer(data_flags, out_dir: Path, marks_s, seed=0):
    """The peer's training process: trains until the last mark, saves peer_<k>.pt at each, writes peer.json."""
    import torch

    torch.set_num_threads(PEER["threads"])
    torch.manual_seed(seed)
    cfg = config_from_args(data_flags)
    train_set = build_dataset(cfg, cfg.train_split)   # reuses the folder the parent generated
    model = build_peer(train_set.num_classes)
    model.train()
    optimizer, scheduler = peer_optimizer(model)
    loader = DataLoader(train_set, batch_size=PEER["batch"], flip_prob=cfg.flip_prob, seed=cfg.seed,
                        num_workers=cfg.num_workers)
    batches = loader.batches()
    out_dir.mkdir(parents=True, exist_ok=True)
    saved, it, k, log = [], 0, 0, []
    t0 = time.perf_counter()
    while k < len(marks_s):
        images, targets = next(batches)
        losses = peer_step(model, optimizer, scheduler, images, targets)
        it += 1
        now = time.perf_counter() - t0
        if it % 20 == 0:
            log.append({"iteration": it, "time": now, **losses})
        mean_step = now / it
        while k < len(marks_s) and now + mean_step > marks_s[k]:   # the next step would end past mark k
            path = out_dir / f"peer_{k}.pt"
            torch.save(model.state_dict(), str(path) + ".tmp")
            os.replace(str(path) + ".tmp", path)
            saved.append({"mark_s": marks_s[k], "iteration": it, "time": now, "path": path.name})
            k += 1
    train_s = time.perf_counter() - t0
    record = {"train_s": train_s, "iterations": it, "images_per_s": it * PEER["batch"] / train_s,
              "params": num_parameters(model), "saved": saved, "log": log}
    (out_dir / "peer.json").write_text(json.dumps(record, indent=1))
    return record


def peer_evaluate(state_path, dataset, batch_size=4):
    """COCOeval (bbox, segm) of the peer's weights in `state_path` on every image of `dataset`."""
    import torch

    torch.set_num_threads(PEER["threads"])
    model = build_peer(dataset.num_classes)
    model.load_state_dict(torch.load(state_path, map_location="cpu"))
    model.eval()
    results = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(len(dataset), start + batch_size)))
            outs = model([torch.from_numpy(dataset[i][0]) for i in idx])
            for i, det in zip(idx, outs, strict=True):
                det = {k: v.numpy() for k, v in det.items()}
                results.extend(detections_to_coco(det, dataset.ids[i], dataset.label_to_cat_id))
    return coco_evaluate(dataset.coco, results, dataset.ids, verbose=False)


# --- the arms: each trainer in its own process ------------------------------------------------------

def run_child(cmd, log_path: Path, run_dir: Path | None = None, pruner=None):
    """Run cmd to completion with its output in log_path; returns (returncode, peak RSS in MB, wall s)."""
    print("running:", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT)
        if pruner:
            pruner.start()
        _, status, usage = os.wait4(proc.pid, 0)   # this child's own rusage: the peaks stay separate
        proc.returncode = os.waitstatus_to_exitcode(status)
        if pruner:
            pruner.stop.set()
            pruner.join()
            pruner.prune()
    if proc.returncode != 0:
        print(f"{cmd[1:3]} exited with {proc.returncode}; last lines of {log_path}:\n"
              + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
    return proc.returncode, usage.ru_maxrss / 1024.0, time.perf_counter() - t0


class TrainStartPruner(CheckpointPruner):
    """train_shapes' pruner with the marks counted from the start of training (config.json's mtime)."""

    def prune(self):
        cfg = self.run_dir / "config.json"
        if cfg.exists():
            self.launch = cfg.stat().st_mtime
            super().prune()


def peer_arm(data_flags, arm_dir: Path, marks_s, val_set):
    cmd = [sys.executable, __file__, "--_train-peer", json.dumps({"flags": data_flags, "marks_s": list(marks_s)}),
           "--workdir", arm_dir]
    rc, peak, _ = run_child(cmd, arm_dir.parent / "peer.log")
    if rc != 0:
        raise SystemExit(rc)
    rec = json.loads((arm_dir / "peer.json").read_text())
    print("scoring the peer's marks ...", flush=True)
    marks = []
    for s in rec["saved"]:
        m = peer_evaluate(arm_dir / s["path"], val_set)
        marks.append({"minutes": s["mark_s"] / 60, "iteration": s["iteration"], "at_min": s["time"] / 60,
                      "segm_AP": m["segm"]["AP"], "bbox_AP": m["bbox"]["AP"]})
    return {"train_s": rec["train_s"], "iterations": rec["iterations"], "images_per_s": rec["images_per_s"],
            "peak_rss_mb": peak, "params": rec["params"], "marks": marks}


def minimask_arm(data_flags, arm_dir: Path, marks_s, val_set, every=10):
    flags = [*data_flags, "--output-dir", str(arm_dir), "--checkpoint-every", str(every), "--log-every", str(every),
             "--time-limit-minutes", repr(max(marks_s) / 60)]
    cfg = config_from_args(flags)
    pruner = TrainStartPruner(arm_dir, time.time(), list(marks_s))
    rc, peak, _ = run_child([sys.executable, "-m", "minimask.train", *flags], arm_dir.parent / "minimask.log",
                            arm_dir, pruner)
    if rc != 0:
        raise SystemExit(rc)
    summary = json.loads((arm_dir / "summary.json").read_text())
    train_s = summary["train_minutes"] * 60
    print("scoring minimask's marks ...", flush=True)
    start = (arm_dir / "config.json").stat().st_mtime
    scored = score_marks(arm_dir, 0.0, list(marks_s), val_set, cfg.batch_size, launch=start)
    marks = [{"minutes": m / 60, "iteration": it, "at_min": None if t is None else t / 60,
              "segm_AP": None if r is None else r["segm"]["AP"], "bbox_AP": None if r is None else r["bbox"]["AP"]}
             for m, it, t, r in scored]
    for ckpt in arm_dir.glob("checkpoint_*.npz"):
        ckpt.unlink()
    n_params = build_model(cfg, val_set.num_classes, np.random.default_rng(0)).num_parameters()
    return {"train_s": train_s, "iterations": summary["iterations"],
            "images_per_s": summary["iterations"] * cfg.batch_size / train_s, "peak_rss_mb": peak,
            "params": n_params, "final_segm_AP": summary["segm_AP"], "marks": marks,
            "last_logged": (read_metrics(arm_dir) or [{}])[-1].get("iteration")}


# --- the table ----------------------------------------------------------------------------------------

def fmt(x, spec=".3f"):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def spread(values, spec=".3f"):
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    lo, hi = min(vals), max(vals)
    return fmt(lo, spec) if len(vals) == 1 else f"{fmt(lo, spec)}..{fmt(hi, spec)}"


def print_run(name, run):
    peer, mm = run["peer"], run["minimask"]
    print(f"\n== {name}: segm AP (bbox AP) on the whole val split; (iteration, minutes of its weights)")
    print(f"{'minutes':>8} | {'torchvision peer':>28} | {'minimask default':>28}")
    for p, m in zip(peer["marks"], mm["marks"], strict=True):
        cell = lambda r: (f"{fmt(r['segm_AP'])} ({fmt(r['bbox_AP'])}) it {fmt(r['iteration'], 'd')}"  # noqa: E731
                          f" @{fmt(r['at_min'], '.2f')}")
        print(f"{p['minutes']:8.2f} | {cell(p):>28} | {cell(m):>28}")
    print(f"{'images/s':>8} | {peer['images_per_s']:28.2f} | {mm['images_per_s']:28.2f}")
    print(f"{'peak GB':>8} | {peer['peak_rss_mb'] / 1024:28.2f} | {mm['peak_rss_mb'] / 1024:28.2f}")


def print_spread(runs):
    done = [r for r in runs if "peer" in r and "minimask" in r]
    print(f"\n== issue 17's table over {len(done)} run(s): segm AP, min..max (bbox AP min..max)")
    print(f"{'minutes':>8} | {'torchvision peer':>26} | {'minimask default':>26}")
    for i, mark in enumerate(done[0]["peer"]["marks"]):
        cells = []
        for arm in ("peer", "minimask"):
            seg = spread([r[arm]["marks"][i]["segm_AP"] for r in done])
            box = spread([r[arm]["marks"][i]["bbox_AP"] for r in done])
            cells.append(f"{seg} ({box})")
        print(f"{mark['minutes']:8.2f} | {cells[0]:>26} | {cells[1]:>26}")
    for label, key, scale, spec in (("images/s", "images_per_s", 1, ".2f"), ("peak GB", "peak_rss_mb", 1024, ".2f")):
        cells = [spread([r[arm][key] / scale for r in done], spec) for arm in ("peer", "minimask")]
        print(f"{label:>8} | {cells[0]:>26} | {cells[1]:>26}")
    p, m = done[0]["peer"], done[0]["minimask"]
    print(f"parameters: peer {p['params'] / 1e6:.2f} M, minimask {m['params'] / 1e6:.2f} M; "
          f"{os.cpu_count()} CPU cores")


# --- main ---------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--runs", type=int, default=1, help="repeat the whole comparison this many times")
    p.add_argument("--marks", default=None, help="minutes of training, comma-separated (default 2.5,5,8)")
    p.add_argument("--workdir", default=None, help="results, runs and data (default runs/main_job_vs_peer[-quick])")
    p.add_argument("--data", default=None, help="an existing shapes folder (default <workdir>/shapes-data)")
    p.add_argument("--quick", action="store_true", help="smoke test: 32 train / 8 val images, marks 0.2,0.4,0.6")
    p.add_argument("--no-profile", action="store_true", help="skip benchmarks/profile_step.py at the end")
    p.add_argument("--_train-peer", dest="train_peer", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train_peer:   # the peer's own training process (run by peer_arm)
        job = json.loads(args.train_peer)
        train_peer(job["flags"], Path(args.workdir), job["marks_s"])
        return 0

    default_marks = QUICK_MARKS if args.quick else FULL_MARKS
    marks = tuple(float(m) for m in args.marks.split(",")) if args.marks else default_marks
    marks_s = [60 * m for m in marks]
    work = Path(args.workdir or ("runs/main_job_vs_peer" + ("-quick" if args.quick else ""))).resolve()
    data = Path(args.data).resolve() if args.data else work / "shapes-data"
    data_flags = ["--data-dir", str(data)] + (QUICK_DATA_FLAGS if args.quick else [])
    cfg = config_from_args(data_flags)
    print(f"data: {data} ({cfg.num_train_images} train + {cfg.num_val_images} val {cfg.image_size}px shapes, "
          f"seed {cfg.seed}; generated now unless already there)", flush=True)
    build_dataset(cfg, cfg.train_split)   # exactly train.py's calls: the children reuse these files
    val_set = build_dataset(cfg, cfg.val_split)

    import torch  # the oracle extra; said now rather than after the first arm
    model = build_peer(val_set.num_classes)
    print(f"\npeer: torchvision {__import__('torchvision').__version__} MaskRCNN, torch {torch.__version__}, "
          f"{num_parameters(model):,} parameters; construction checked against issue 17:")
    for item, wanted, _ in check_peer(model):
        print(f"  ok  {item}: {wanted}")

    settings = {"marks": list(marks), "data": str(data), "data_flags": data_flags}
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"settings": settings, "runs": []}
    if results["settings"] != settings:
        p.error(f"{results_path} holds results for {results['settings']}; use another --workdir")
    work.mkdir(parents=True, exist_ok=True)

    for r in range(args.runs):
        while len(results["runs"]) <= r:
            results["runs"].append({})
        run = results["runs"][r]
        order = ("peer", "minimask") if r % 2 == 0 else ("minimask", "peer")
        for arm in order:
            if arm in run:
                print(f"run {r + 1} {arm}: cached in {results_path}, skipped")
                continue
            arm_dir = work / f"run{r + 1}" / arm
            if arm_dir.exists():   # an interrupted arm of ours: start it again
                shutil.rmtree(arm_dir)
            arm_dir.mkdir(parents=True)
            print(f"\n== run {r + 1}/{args.runs}: {arm} trains for {marks[-1]} min", flush=True)
            if arm == "peer":
                run[arm] = peer_arm(data_flags, arm_dir, marks_s, val_set)
            else:   # --quick: minimask checkpoints every 2 iterations, so even a slow machine has one per mark
                run[arm] = minimask_arm(data_flags, arm_dir, marks_s, val_set, every=2 if args.quick else 10)
            tmp = results_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=1))
            os.replace(tmp, results_path)
        print_run(f"run {r + 1}", run)
    print_spread(results["runs"][:args.runs])
    print(f"results: {results_path}")

    if not args.no_profile:
        cmd = [sys.executable, str(HERE / "profile_step.py"), "--data", str(data)]
        cmd += (["--quick", *QUICK_DATA_FLAGS] if args.quick else [])
        print("\nrunning:", " ".join(cmd), flush=True)
        return subprocess.call(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
