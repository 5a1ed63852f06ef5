"""Run directories: where a training run writes, and what it refuses to touch.

Default: `runs/<preset>` is never reused. When it holds anything, a new run takes the next free
         `runs/<preset>-2`, `-3`, ... and says so (as Ultralytics' exp2, Lightning's version_1), so the
         README command can be run again and again. `--resume` alone continues the newest of them.
Chosen:  an explicit --output-dir is used when it is absent or empty. When it holds a run it is
         refused unless --resume (continue it) or --overwrite (first delete the files that run
         wrote, as listed in its manifest). A folder holding other files is used only when none of
         them has a name a run writes (as the Hugging Face Trainer refuses a non-empty output dir).
Manifest: manifest.json lists every file the run wrote, each recorded before it is written;
         --overwrite deletes exactly those. A file not in it is never overwritten or deleted.
Resume:  the configuration comes from the run directory (its config.json); a flag that differs is
         applied and recorded when the field is in RESUME_MAY_CHANGE (iterations may grow; where
         and how verbosely it runs), and refused otherwise, naming the field and both values —
         the model, data and optimisation of a run never change half-way.
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .errors import MinimaskError

MANIFEST = "manifest.json"
# names a run writes: a folder holding one of these that is not in its manifest is not ours to touch
RUN_FILES = ("config.json", "metrics.jsonl", "model_final.npz", "summary.json", "skipped.json", "losses.png",
             "predictions.png", "eval/results.json", "eval/metrics.json", MANIFEST)
RUN_FILE_PATTERN = re.compile(r"checkpoint_\d{7,}\.npz")
RESUME_MAY_CHANGE = {
    "iterations": "may grow: train longer than first planned (not below the checkpoint's iteration)",
    "time_limit_minutes": "a wall-time budget for this session",
    "log_every": "how often metrics.jsonl gets a line",
    "checkpoint_every": "how often a checkpoint is written",
    "eval_limit": "how many val images the final evaluation uses",
    "num_workers": "data-loading threads",
    "device": "where the arithmetic runs",
}
NOT_CONFIGURATION = {"output_dir", "resume", "overwrite"}   # where and how to start, not what the run is


class RunDirError(MinimaskError):
    """A run directory that cannot be used as asked; the message names it and says what to do."""


def atomic_write_text(path: Path, text: str):
    """Write `text` to `path` through a temporary file and a rename: readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _run_like(path: Path):
    """Files in `path` that have the name of a file a run writes."""
    if not path.is_dir():
        return []
    ckpts = [p.name for p in path.glob("checkpoint_*.npz") if RUN_FILE_PATTERN.fullmatch(p.name)]
    return sorted([name for name in RUN_FILES if (path / name).is_file()] + ckpts)


def holds_run(path: Path) -> bool:
    return bool(_run_like(path))


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


class RunDir:
    """A run directory and its manifest: `file(name)` is the only way a run gets a path to write."""

    def __init__(self, path, adopt=False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.written = set()
        manifest = self.path / MANIFEST
        if manifest.is_file():
            try:
                self.written = set(json.loads(manifest.read_text())["files"])
            except (ValueError, KeyError, TypeError) as e:
                raise RunDirError(f"{manifest}: unreadable manifest ({e}); minimask cannot tell its files apart "
                                  "from yours here, so it writes nothing") from None
        elif adopt:   # --resume of a run written before manifests: its run files are its own
            self.written = set(_run_like(self.path))
            self._save()

    def _save(self):
        atomic_write_text(self.path / MANIFEST, json.dumps({"files": sorted(self.written | {MANIFEST})}, indent=1))

    def file(self, name: str) -> Path:
        """The path of `name` (relative) for writing: recorded first; a file we did not write is refused."""
        target = self.path / name
        if name not in self.written:
            if target.exists():
                raise RunDirError(f"{target} exists and is not listed in {self.path / MANIFEST}: minimask never "
                                  "overwrites a file it did not write (move it, or choose another --output-dir)")
            self.written.add(name)
            self._save()
        return target

    def write_text(self, name: str, text: str) -> Path:
        path = self.file(name)
        atomic_write_text(path, text)
        return path

    def remove_written(self):
        """Delete the files this run wrote (and folders they leave empty); nothing else."""
        # a manifest never names a file outside its run directory; never follow one that does
        inside = [n for n in self.written if not Path(n).is_absolute() and ".." not in Path(n).parts]
        for name in inside:
            p = self.path / name
            if p.is_file() or p.is_symlink():
                p.unlink()
        for d in sorted({(self.path / n).parent for n in inside} - {self.path}, key=lambda d: -len(d.parts)):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        self.written = set()
        self._save()


def output_folder(folder) -> RunDir:
    """A RunDir for the outputs of evaluate / predict in `folder`: a file there may be rewritten only
    when minimask wrote it (listed in this folder's manifest, or in its run's when it is `eval/` of one)."""
    folder = Path(folder)
    out = RunDir(folder)
    if (folder.parent / MANIFEST).is_file():
        prefix = folder.name + "/"
        out.written |= {n[len(prefix):] for n in RunDir(folder.parent).written if n.startswith(prefix)}
    return out


def _numbered(base: Path):
    """base, base-2, base-3, ... that exist, with their numbers."""
    out = [(1, base)] if base.exists() else []
    for p in base.parent.glob(base.name + "-*"):
        m = re.fullmatch(re.escape(base.name) + r"-(\d+)", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def choose_run_dir(output_dir: str, default: str, resume=False, overwrite=False, log=print) -> RunDir:
    """Apply the policy of the module docstring; returns the RunDir this run writes into."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if not output_dir and overwrite:
        output_dir = default
    if not output_dir:
        base = Path(default)
        if resume:
            runs = [p for _, p in _numbered(base) if holds_run(p)]
            path = runs[-1] if runs else base
            if runs:
                log(f"--resume: continuing the newest run of this preset, {path}")
            return RunDir(path, adopt=True)
        if _is_empty(base):
            return RunDir(base)
        n = 2
        while not _is_empty(base.parent / f"{base.name}-{n}"):
            n += 1
        path = base.parent / f"{base.name}-{n}"
        log(f"{base} holds an earlier run; this run writes to {path} (pass --resume to continue that one)")
        return RunDir(path)
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--output-dir {path} is a file, not a folder")
    if resume:
        return RunDir(path, adopt=True)
    found = _run_like(path)
    if found and not overwrite:
        raise RunDirError(f"{path} already holds a run ({', '.join(found[:5])}); pass --resume to continue it, "
                          "--overwrite to replace it (deletes only the files that run wrote), or another --output-dir")
    if found:
        if not (path / MANIFEST).is_file():
            raise RunDirError(f"--overwrite: {path} has no {MANIFEST}, so minimask cannot tell which files it wrote "
                              f"there ({', '.join(found[:5])}); delete them yourself or choose another --output-dir")
        run = RunDir(path)
        log(f"--overwrite: deleting the {len(run.written)} files the previous run wrote in {path}")
        run.remove_written()
        left = _run_like(path)
        if left != [MANIFEST]:
            raise RunDirError(f"{path} still holds {left} that the previous run did not write; refusing to mix runs")
        return run
    return RunDir(path)


def _show(v):
    return json.dumps(v)


def merge_resume_config(saved: dict, wanted: dict, given=None, where="the run directory"):
    """The configuration a resumed run uses: `saved` (the run's own) with the allowed changes.

    wanted: the configuration asked for now; given: the fields set explicitly (None: every field
    of `wanted` counts). Returns (config, changes) where changes lists "field: old -> new";
    raises RunDirError naming each refused field with both values.
    """
    config, changes, refused = dict(saved), [], []
    for k, v in wanted.items():
        if k in NOT_CONFIGURATION:
            config[k] = v
            continue
        if (given is not None and k not in given) or (k in saved and saved[k] == v):
            continue
        if k in RESUME_MAY_CHANGE or k not in saved:
            changes.append(f"{k}: {_show(saved.get(k))} -> {_show(v)}")
            config[k] = v
        else:
            refused.append(f"{k}: the run has {_show(saved[k])}, now {_show(v)}")
    if refused:
        allowed = ", ".join(sorted(RESUME_MAY_CHANGE))
        raise RunDirError(f"--resume: {where} was configured differently:\n  " + "\n  ".join(refused)
                          + f"\nA resumed run keeps its model, data and optimisation settings (only {allowed} "
                            "may change); start a new run (another --output-dir) to train with these.")
    return config, changes


def read_run_config(run: RunDir):
    """The run's config.json as a dict, or None when it has none."""
    p = run.path / "config.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise RunDirError(f"{p}: unreadable ({e})") from None


__all__ = ["RunDir", "RunDirError", "choose_run_dir", "output_folder", "merge_resume_config", "read_run_config",
           "holds_run", "atomic_write_text", "RESUME_MAY_CHANGE"]
