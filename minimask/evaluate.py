"""The evaluation CLI: load a checkpoint, run COCOeval on a split (coco_eval.py does the scoring).

Writes results.json (detections in COCO's results format) and metrics.json (COCOeval's 12 numbers
for bbox and segm) beside the checkpoint, in eval/, unless --output-dir says otherwise.

    python -m minimask.evaluate --checkpoint runs/shapes/model_final.npz
    mpiexec -n 2 python -m minimask.evaluate ...   # the images shared by 2 processes: the same numbers
Chapter: nbs/13_coco_data_and_evaluation.ipynb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backend import describe_device_memory, device_module, module_of, track_device_memory
from .builders import build_dataset, load_checkpoint_model
from .coco_eval import (  # noqa: F401  (re-exported: the chapters and tests import them from evaluate, as before)
    STAT_NAMES,
    _quiet,
    coco_evaluate,
    detections_to_coco,
    evaluate_model,
    predict_dataset,
)
from .distributed import lead_first, one_fails_all_fail, select_device, world
from .errors import run_cli
from .fast.host import keep_freed_host_memory
from .rundir import output_folder


def main(argv=None):

    p = argparse.ArgumentParser(prog="python -m minimask.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint .npz written by minimask.train")
    p.add_argument("--split", default=None, help="dataset split to evaluate (default: the run's val split)")
    p.add_argument("--data-dir", default=None, help="override the run's data directory")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--output-dir", default=None, help="where results.json and metrics.json go "
                                                      "(default: beside the checkpoint, in eval/)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (NumPy) or cuda (CuPy; MINIMASK_FAKE_CUDA=1: the stand-in device)")
    args = p.parse_args(argv)
    try:
        device_module(args.device)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep_freed_host_memory()
    comm = world()   # under mpiexec the ranks share the images; rank 0 scores and writes
    with one_fails_all_fail(comm):
        select_device(comm, device_module(args.device))
        model, cfg = load_checkpoint_model(args.checkpoint, device=args.device)
        track_device_memory(module_of(model))
        if args.data_dir:
            cfg = cfg.replace(data_dir=args.data_dir)
        dataset = lead_first(comm, lambda: build_dataset(cfg, args.split or cfg.val_split))   # shapes: made once
        dataset.check_sizes(model.config.transform.min_size, model.config.transform.max_size)
        out_dir = args.output_dir or Path(args.checkpoint).parent / "eval"
        if comm.rank == 0:
            outputs = output_folder(out_dir)   # never written over a file minimask did not write
            for name in ("results.json", "metrics.json"):
                outputs.file(name)
        metrics = evaluate_model(model, dataset, batch_size=args.batch_size, out_dir=out_dir, limit=args.limit,
                                 verbose=comm.rank == 0, comm=comm)
    if comm.rank == 0:
        print(f"\nbbox AP {metrics['bbox']['AP']:.3f}   segm AP {metrics['segm']['AP']:.3f}   -> {out_dir}")
        if args.device == "cuda":
            print(describe_device_memory(module_of(model)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
