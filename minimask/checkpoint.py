"""Checkpoints on disk: written atomically, read back whole, and refused with the file's name.

Files:   checkpoint_<iteration:07d>.npz holds `model.*` (torchvision names), `optimizer.*`,
         `scheduler.*` and `meta`, a JSON string {format, iteration, rng, config, class_names, world_size}.
         model_final.npz holds the model's arrays under their plain names (it loads into a model as
         it is, e.g. with --weights) plus the same `meta`, so evaluate and predict can rebuild the model.
Atomic:  `module.save_state_dict` writes `.tmp-XXXXXXXX.npz` beside the target, then renames it: a
         kill leaves the old file or the new one, never half of one. A kill before the rename leaves
         the temporary file; `remove_stale_temp_files` deletes exactly those names.
Checked: `read_checkpoint` reads every array in full (the zip's CRC-32 of each one is verified),
         parses and checks `meta`; a truncated, bit-flipped or empty file raises CheckpointError
         naming it. `latest_valid_checkpoint` skips unreadable ones, saying so.
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .backend import to_host
from .errors import MinimaskError
from .module import load_state_file, save_state_dict

CHECKPOINT_FORMAT = "minimask-checkpoint-1"   # full training state
MODEL_FORMAT = "minimask-model-1"             # model_final.npz: weights + what it takes to rebuild the model
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d{7,})\.npz")
# the exact names tempfile.mkstemp(prefix=".tmp-", suffix=".npz" or ".json") makes for minimask: 8 of [a-z0-9_]
TEMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}\.(npz|json)")


class CheckpointError(MinimaskError):
    """A checkpoint that cannot be used; the message names the file."""


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:07d}.npz"


def _flat(prefix, state):
    return {f"{prefix}.{k}": np.asarray(to_host(v)) for k, v in state.items()}


def _unflat(prefix, state):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def save_checkpoint(path, model, optimizer, scheduler, iteration, rng, config: dict, class_names, world_size=1):
    """model.*, optimizer.*, scheduler.* arrays plus a JSON `meta` string, in one atomic .npz.

    world_size: the processes training together (distributed.py); --resume needs as many."""
    meta = {"format": CHECKPOINT_FORMAT, "iteration": int(iteration), "rng": rng.bit_generator.state,
            "config": config, "class_names": list(class_names), "world_size": int(world_size)}
    state = {**_flat("model", model.state_dict()), **_flat("optimizer", optimizer.state_dict()),
             **_flat("scheduler", scheduler.state_dict()), "meta": np.array(json.dumps(meta))}
    save_state_dict(state, path)


def save_model(path, model, iteration, config: dict, class_names):
    """The final weights under torchvision's names, plus `meta` (format minimask-model-1)."""
    meta = {"format": MODEL_FORMAT, "iteration": int(iteration), "config": config, "class_names": list(class_names)}
    save_state_dict({**model.state_dict(), "meta": np.array(json.dumps(meta))}, path)


def read_checkpoint(path):
    """(state, meta) of a checkpoint or model_final.npz, every array read and checked.

    Raises CheckpointError naming `path` when the file is missing, empty, truncated, corrupt
    (bad CRC), or not written by minimask.train.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        state = load_state_file(path)   # reads every member: zipfile checks each one's CRC-32
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupt ({type(e).__name__}: {e})") \
            from None
    if "meta" not in state:
        raise CheckpointError(f"{path}: not a minimask training checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(state.pop("meta")))
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt 'meta' entry ({e})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path}: unknown checkpoint format {fmt!r}")
    missing = [k for k in ("iteration", "config", "class_names") + (("rng",) if fmt == CHECKPOINT_FORMAT else ())
               if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: 'meta' lacks {missing}")
    if fmt == CHECKPOINT_FORMAT and not any(k.startswith("model.") for k in state):
        raise CheckpointError(f"{path}: no model arrays")
    return state, meta


def model_state(state, meta):
    """The model's arrays (torchvision names) out of `read_checkpoint`'s state."""
    return _unflat("model", state) if meta["format"] == CHECKPOINT_FORMAT else dict(state)


def training_state(state):
    """(model, optimizer, scheduler) state dicts of a full checkpoint."""
    return _unflat("model", state), _unflat("optimizer", state), _unflat("scheduler", state)


def list_checkpoints(run_dir):
    """Checkpoint files of a run directory, oldest first (by iteration)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint_*.npz")
             if (m := CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir):
    """The newest checkpoint file by name (not read); None when there is none."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def latest_valid_checkpoint(run_dir, log=print):
    """(path, state, meta) of the newest checkpoint that reads back whole, or None when there is none.

    Unreadable newer ones are skipped with a message; when every checkpoint is unreadable,
    CheckpointError lists them (nothing is deleted: they are the user's evidence).
    """
    ckpts = list_checkpoints(run_dir)
    bad = []
    for path in reversed(ckpts):
        try:
            state, meta = read_checkpoint(path)
        except CheckpointError as e:
            bad.append(str(e))
            continue
        if bad and log:
            log("unreadable checkpoint(s) skipped:\n  " + "\n  ".join(bad) + f"\nfalling back to {path}")
        return path, state, meta
    if bad:
        raise CheckpointError(f"no readable checkpoint in {run_dir}:\n  " + "\n  ".join(bad))
    return None


def last_good_checkpoint(run_dir):
    """The newest readable checkpoint's path, or None (for messages; never raises)."""
    try:
        found = latest_valid_checkpoint(run_dir, log=None)
    except CheckpointError:
        return None
    return found[0] if found else None


def remove_stale_temp_files(run_dir):
    """Delete the half-written `.tmp-XXXXXXXX.npz` (and `.json`) files a kill left in `run_dir`; returns them."""
    removed = [p for p in Path(run_dir).glob(".tmp-*") if TEMP_NAME.fullmatch(p.name) and p.is_file()]
    for p in removed:
        p.unlink()
    return removed
