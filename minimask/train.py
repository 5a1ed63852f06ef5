"""Train Mask R-CNN: `python -m minimask.train` (the main job).

With no arguments it generates the synthetic shapes dataset, trains a small ResNet-FPN Mask R-CNN
from scratch on the CPU, evaluates it with COCOeval on the val split (the 12 standard numbers for
bbox and segm) and draws pictures. Presets: `shapes` (default), `coco128` (../shared/data/coco128
or $MINIMASK_DATA/coco128; never the package's 10-image sample), `coco-r50-fpn-1x` (full COCO:
batch 16, LR 0.02, 90k iterations, steps at 60k and 80k, warmup). Every field of `TrainConfig` is a
`--flag` (`--help` lists them); `--set name=value` changes any model configuration field (see config.py
and rpn.py).

A run directory holds: config.json (the resolved configuration), metrics.jsonl (one line per
logged iteration: LR, each loss, time), checkpoints (model, optimizer, scheduler, iteration and
random-generator state in one .npz, written atomically; see checkpoint.py), model_final.npz,
eval/ (COCO results and metrics), PNGs (loss curves, predictions on validation images),
skipped.json (with --skip-bad) and manifest.json (every file the run wrote). rundir.py decides
where a run writes and what it never touches (runs/<preset> is never reused; an explicit
--output-dir holding a run needs --resume or --overwrite). `--resume` continues from the newest
readable checkpoint exactly, with the run's own configuration: an interrupted run resumed
reproduces the uninterrupted run's losses. A non-finite loss or gradient stops the run (NonFiniteLoss).
`mpiexec -n N python -m minimask.train ...` trains one model on N processes (distributed.py):
--batch-size stays the global batch, each rank reads its share of it, the gradients are summed over
the ranks, and rank 0 alone writes; checkpoints record N and --resume needs the same N.
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import builders, distributed, paths
from .backend import (
    describe_device_memory,
    device_module,
    to_device,
    to_host,
    track_device_memory,
)
from .builders import (  # noqa: F401  (TrainConfig and the builders are importable from train, as before)
    PRESETS,
    TrainConfig,
    build_dataset,
    build_model,
    build_optimizer,
    config_from_json,
    config_to_json,
    load_checkpoint_model,
    parse_overrides,
    resolve_data_dir,
)
from .checkpoint import (
    checkpoint_name,
    last_good_checkpoint,
    latest_checkpoint,  # noqa: F401  (chapters 12-13 call train.latest_checkpoint)
    latest_valid_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    save_model,
    training_state,
)
from .coco_eval import evaluate_model
from .data import DataLoader
from .errors import run_cli
from .fast.host import keep_freed_host_memory
from .losses import NonFiniteError
from .optim import clip_grad_norm_
from .rundir import RunDirError, atomic_write_text, choose_run_dir, merge_resume_config, read_run_config
from .tape import Tensor
from .viz import plot_losses, plot_predictions


def _field_help(name):
    """The comment after a field in this file's TrainConfig: the single source of the --help text."""
    src = Path(builders.__file__).read_text().split("class TrainConfig", 1)[1].split("def replace", 1)[0]
    for line in src.splitlines():
        if line.strip().startswith(f"{name}:") and "#" in line:
            return line.split("#", 1)[1].strip()
    return ""


def make_parser():
    p = argparse.ArgumentParser(
        prog="python -m minimask.train", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_field_help(f.name)
                           + f" (default: {default})")
        elif f.name == "set":
            p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE", help=_field_help(f.name))
        elif isinstance(default, tuple):
            p.add_argument(flag, type=lambda s: tuple(int(v) for v in s.split(",") if v), default=None,
                           metavar="A,B", help=_field_help(f.name) + f" (default: {','.join(map(str, default))})")
        else:
            p.add_argument(flag, type=type(default), default=None,
                           choices=list(PRESETS) if f.name == "preset" else None,
                           help=_field_help(f.name) + f" (default: {default!r})")
    return p


def parse_config(argv=None):
    """(TrainConfig, names of the fields set on the command line): --resume compares only those."""
    args = vars(make_parser().parse_args(argv))
    preset = args.get("preset") or TrainConfig.preset
    cfg = TrainConfig(preset=preset).replace(**PRESETS[preset])
    given = {k: (tuple(v) if k == "set" else v) for k, v in args.items() if v is not None}
    return cfg.replace(**given), set(given)


def config_from_args(argv=None) -> TrainConfig:
    """The configuration the flags ask for; an empty output_dir means runs/<preset> (see rundir.py)."""
    return parse_config(argv)[0]


# --- the loop ------------------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """Raised by `train(..., interrupt_at=k)`: simulates a run killed after iteration k (for tests)."""


def open_run(cfg: TrainConfig, given=None):
    """(RunDir, the configuration this run uses, (path, state, meta) of the checkpoint to resume or None).

    The directory follows rundir.py's policy. On --resume the configuration is the run's own
    (config.json) with the changes `merge_resume_config` allows, and the checkpoint is the newest
    readable one; temporary files a kill left behind are removed first.
    """
    run = choose_run_dir(cfg.output_dir, str(Path("runs") / cfg.preset), cfg.resume, cfg.overwrite)
    found = None
    if cfg.resume or cfg.overwrite:
        removed = remove_stale_temp_files(run.path)
        if removed:
            print(f"removed {len(removed)} half-written temporary file(s) an interrupted run left in {run.path}")
    if cfg.resume:
        found = latest_valid_checkpoint(run.path)
        saved = read_run_config(run) or (found[2]["config"] if found else None)
        if saved is not None:
            merged, changes = merge_resume_config(saved, config_to_json(cfg), given, where=str(run.path))
            cfg = config_from_json(merged)
            for change in changes:
                print(f"--resume: {change} (applied; config.json records it)")
        if found is None:
            print(f"--resume: no checkpoint in {run.path}, starting from scratch")
    return run, cfg.replace(output_dir=str(run.path)), found


def _diverged(what, run_dir):
    return (f"{what}; stopping. The last good checkpoint is {last_good_checkpoint(run_dir) or '(none yet)'}; "
            "try a lower --lr or --clip-grad-norm")


def write_skipped(run, datasets):
    """--skip-bad: print how many annotations and images were skipped and save them to skipped.json."""
    unique = {(r["file"], r["image_id"], r["annotation_id"]): r for ds in datasets for r in ds.skipped_records.values()}
    records = list(unique.values())   # train and val may be the same file
    run.write_text("skipped.json", json.dumps({"count": len(records), "skipped": records}, indent=1))
    n_img = sum(r["annotation_id"] is None for r in records)
    print(f"--skip-bad: skipped {len(records) - n_img} annotation(s) and {n_img} image(s); "
          f"what and why: {run.path / 'skipped.json'}")


def train(cfg: TrainConfig, progress=True, interrupt_at=None, given=None, comm=None):
    """Run (or resume) training as configured; returns {"metrics": ..., "run_dir": ...}.

    `interrupt_at=k` stops right after iteration k as a crash would — no final checkpoint, no
    evaluation — so tests can check that `--resume` reproduces the uninterrupted run.
    `given`: the fields set on the command line; --resume compares only those with the run's
    configuration (None: every field of `cfg`).
    `comm`: the processes training together (default `distributed.world()`: the ranks mpiexec
    started, or this process alone). Every rank runs this function on its share of each batch;
    rank 0 alone writes the run directory, logs and draws the progress bar.
    """
    comm = comm if comm is not None else distributed.world()
    lead = comm.rank == 0
    run, cfg, found = open_run(cfg, given) if lead else (None, None, None)
    cfg, ckpt = comm.bcast((cfg, found[0] if found else None))   # the run rank 0 chose, for every rank
    distributed.check_batch_size(cfg.batch_size, comm.size)
    if ckpt is not None:
        found = found if lead else (ckpt, *read_checkpoint(ckpt))
        distributed.check_resume(found[2], comm.size, ckpt)
    run_dir = Path(cfg.output_dir)
    if lead and cfg.dataset == "shapes" and not cfg.data_dir and not paths.data_dir():
        print("note: no COCO data found (../shared/data or $MINIMASK_DATA); training on generated shapes")
    # rank 0 generates the shapes (when missing) before the others read them
    train_set, val_set = distributed.lead_first(
        comm, lambda: (build_dataset(cfg, cfg.train_split), build_dataset(cfg, cfg.val_split)))
    class_names = train_set.class_names
    rng = np.random.default_rng([cfg.seed, 1])   # model init: the same weights on every rank
    xp = device_module(cfg.device)
    distributed.select_device(comm, xp)
    track_device_memory(xp)
    model = build_model(cfg, train_set.num_classes, rng)
    model.train()
    for ds in (train_set, val_set):   # an image the resize would make 0 px thin: named now, not mid-run
        ds.check_sizes(model.config.transform.min_size, model.config.transform.max_size)
    if cfg.skip_bad and lead:
        write_skipped(run, (train_set, val_set))
    optimizer, scheduler = build_optimizer(cfg, model)
    start = 0
    if found is not None:
        ckpt, state, meta = found
        model_sd, optimizer_sd, scheduler_sd = training_state(state)
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optimizer_sd)
        scheduler.load_state_dict(scheduler_sd)
        rng.bit_generator.state = meta["rng"]
        start = int(meta["iteration"])
        if start > cfg.iterations:
            raise RunDirError(f"--iterations {cfg.iterations} is below the iteration of {ckpt} ({start})")
        if lead:
            print(f"resumed from {ckpt} at iteration {start}")
    if lead:
        run.write_text("config.json", json.dumps(config_to_json(cfg), indent=2))

    loader = DataLoader(train_set, batch_size=cfg.batch_size, flip_prob=cfg.flip_prob, seed=cfg.seed,
                        num_workers=cfg.num_workers, rank=comm.rank, world_size=comm.size)
    batches = loader.batches(start=start)
    metrics_path = run_dir / "metrics.jsonl"
    if lead:
        run.file("metrics.jsonl")
        if start == 0 and metrics_path.exists():
            metrics_path.unlink()
        else:
            _truncate_metrics(metrics_path, start)
    t0 = time.perf_counter()
    it = start
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", disable=not (progress and lead), unit="it",
               dynamic_ncols=True)
    try:
        while it < cfg.iterations:
            # rank 0's clock decides, so that every rank stops at the same iteration
            if cfg.time_limit_minutes and comm.bcast(time.perf_counter() - t0 > 60 * cfg.time_limit_minutes):
                if lead:
                    print(f"\ntime limit of {cfg.time_limit_minutes} min reached at iteration {it}")
                break
            t_data = time.perf_counter()
            # one explicit upload per batch: every image and every target array (a no-op on the CPU)
            images, targets = to_device(next(batches), xp)   # this rank's share of the global batch
            t_step = time.perf_counter()
            # every random choice of image i from its own stream: the same samples however the batch is split
            rngs = [np.random.default_rng([cfg.seed, 2, it, int(t["image_id"])]) for t in targets]
            try:
                losses = model(images, targets, rng=rngs) if images else {}
            except NonFiniteError as e:   # a loss met NaN/inf logits: the weights have diverged
                raise NonFiniteLoss(_diverged(f"non-finite loss at iteration {it + 1} ({e})", run_dir)) from None
            # each mean over this rank's samples -> its share of the mean over all ranks' (one process: as is)
            losses = distributed.global_losses(losses, model.loss_counts if images else {}, comm)
            # the loss values come back to the host together: one device->host copy per iteration
            host = np.zeros(len(distributed.LOSS_NAMES))   # a rank without an image this step adds zeros
            if losses:
                host = to_host(xp.stack([v.data.reshape(()) for v in losses.values()]))
            host = comm.allreduce_sum(host.astype(np.float64))   # the ranks' shares add up to the global losses
            values = {k: float(x) for k, x in zip(losses or distributed.LOSS_NAMES, host, strict=True)}
            total = sum(values.values())
            if not math.isfinite(total):
                raise NonFiniteLoss(_diverged(f"non-finite loss at iteration {it + 1}: {values}", run_dir))
            optimizer.zero_grad()
            if losses:
                loss = None
                for v in losses.values():
                    loss = v if loss is None else loss + v
                assert isinstance(loss, Tensor)
                loss.backward()
            distributed.allreduce_gradients(model.parameters(), comm)   # summed: the global batch's gradient
            grad_norm = float(to_host(clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)))
            if not math.isfinite(grad_norm):   # checked before the step: the weights stay those of iteration it
                raise NonFiniteLoss(_diverged(f"non-finite gradient norm ({grad_norm}) at iteration {it + 1}", run_dir))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            it += 1
            now = time.perf_counter()
            if lead and (it % cfg.log_every == 0 or it == cfg.iterations):
                record = {"iteration": it, "lr": lr, "loss": total, **values, "grad_norm": grad_norm,
                          "time": now - t0, "step_time": now - t_step, "data_time": t_step - t_data}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}", mask=f"{values.get('loss_mask', 0):.3f}", lr=f"{lr:.4f}")
            if lead and (it % cfg.checkpoint_every == 0 or it == cfg.iterations):
                save_checkpoint(run.file(checkpoint_name(it)), model, optimizer, scheduler, it, rng,
                                config_to_json(cfg), class_names, world_size=comm.size)
            if interrupt_at is not None and it >= interrupt_at:
                raise Interrupted(f"simulated interruption after iteration {it}")
    finally:
        bar.close()
    if lead and it % cfg.checkpoint_every != 0 and it != cfg.iterations:  # stopped by the time limit
        save_checkpoint(run.file(checkpoint_name(it)), model, optimizer, scheduler, it, rng, config_to_json(cfg),
                        class_names, world_size=comm.size)
    train_time = time.perf_counter() - t0
    if lead:
        if xp is not np:
            print(describe_device_memory(xp))
        save_model(run.file("model_final.npz"), model, it, config_to_json(cfg), class_names)
        for name in ("eval/results.json", "eval/metrics.json"):   # recorded before evaluate_model writes them
            run.file(name)
    metrics = evaluate_model(model, val_set, batch_size=cfg.batch_size, out_dir=run_dir / "eval",
                             progress=progress, verbose=lead, limit=cfg.eval_limit or None, comm=comm)
    if lead:
        plot_losses(metrics_path, run.file("losses.png"))
        plot_predictions(model, val_set, run.file("predictions.png"), class_names=class_names)
        if cfg.skip_bad:   # annotations found bad while training are in it too
            write_skipped(run, (train_set, val_set))
        summary = {"iterations": it, "train_minutes": train_time / 60,
                   "bbox_AP": metrics["bbox"]["AP"], "segm_AP": metrics["segm"]["AP"]}
        run.write_text("summary.json", json.dumps(summary, indent=2))
        print(f"\ntrained {it} iterations in {train_time / 60:.1f} min | bbox AP {summary['bbox_AP']:.3f} | "
              f"segm AP {summary['segm_AP']:.3f}\nrun directory: {run_dir} (losses.png, predictions.png, eval/)")
    return {"metrics": metrics, "run_dir": run_dir, "iterations": it}


def _truncate_metrics(path: Path, iteration: int):
    """On resume, drop metric lines past the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass   # a line half-written when the run was killed
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def main(argv=None):
    cfg, given = parse_config(argv)
    try:
        device_module(cfg.device)   # a missing CuPy or GPU is said now, not after the data is generated
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep_freed_host_memory()  # a process that trains reuses its temporaries' memory (see fast/host.py)
    os.environ.setdefault("PYTHONHASHSEED", str(cfg.seed))
    comm = distributed.world()   # under mpiexec: this process's rank; else this process alone
    try:
        with distributed.one_fails_all_fail(comm):
            train(cfg, given=given, comm=comm)
    except (NonFiniteLoss, FileNotFoundError) as e:   # both messages name the file and what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
