"""Fault injection: kill -9 during checkpoint writes, then --resume; and bad input of every kind.

Usage:   python benchmarks/faults.py [--kills 20] [--seed 14] [--workdir DIR] [--skip-bad-input]
Kills:   a tiny run (4 shapes images of 64 px, ResNet-18-FPN of width 8, 4 iterations, a checkpoint
         every iteration) is run once uninterrupted. Then runs of the same configuration are killed
         with SIGKILL at seeded random points of their checkpoint writes (write number and byte
         offset; about 1 in 10 after the last byte, just before the rename; tests/fault_injection.py)
         and resumed with --resume — sometimes killed again — until one finishes. Each finished run's
         model_final.npz must equal the uninterrupted run's bit for bit. After every kill every
         checkpoint under its final name must read back whole; the data folder and a file of the
         user's beside the run must be unchanged at the end.
Bad input: each case runs a CLI (train / evaluate / predict) on a copy of real COCO files (coco128,
         see tests/coco_files.py) or on a checkpoint broken on purpose, and prints what happened:
         "clear error naming <file>" (exit 2, the file in the message, no traceback), "counted skip"
         (--skip-bad: exit 0 and the record in skipped.json), the expected behaviour (e.g. "fell back"),
         or "CRASH" (anything else). Counts, not timings: run it on any machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))   # the fault-injection and COCO-copy helpers the tests use
from coco_files import coco_copy, edit_annotations, fingerprint  # noqa: E402
from fault_injection import final_weights, kill_points, run, same_weights, unreadable_checkpoints  # noqa: E402

ITERATIONS = 4
TINY = ["--num-train-images", "4", "--num-val-images", "1", "--image-size", "64", "--min-size", "64",
        "--max-size", "64", "--width", "8", "--base-width", "8", "--batch-size", "2", "--iterations",
        str(ITERATIONS), "--milestones", "3", "--warmup-iters", "1", "--checkpoint-every", "1", "--log-every", "1",
        "--eval-limit", "1", "--num-workers", "1"]


def _done_iterations(out):
    from minimask.checkpoint import CheckpointError, latest_valid_checkpoint

    try:
        found = latest_valid_checkpoint(out, log=None)
    except CheckpointError:
        return 0
    return int(found[2]["iteration"]) if found else 0


def kill_chains(work, n_kills, seed):
    """Kill, resume, (kill again,) finish: until n_kills kills fired. Returns the counts of the table."""
    data = work / "shapes"
    flags = TINY + ["--data-dir", str(data)]
    base = run(flags + ["--output-dir", str(work / "base")], cwd=work)
    if base.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{base.stderr}")
    size = (work / "base" / "checkpoint_0000001.npz").stat().st_size
    reference = final_weights(work / "base")
    rng = np.random.default_rng(seed)
    counts = dict(kills=0, chains=0, reproduced=0, unreadable=0, modified=0, launches=0)
    while counts["kills"] < n_kills:
        out = work / f"chain-{counts['chains']}"
        out.mkdir()
        (out / "my_notes.txt").write_text("the user's own file, beside the run")
        before = fingerprint(data)
        for attempt in range(3):   # up to two kills, then a plain resume
            kill = None
            if attempt < 2 and counts["kills"] < n_kills:
                writes = ITERATIONS - _done_iterations(out) + 1     # checkpoints left + model_final
                kill = kill_points(rng, 1, writes, size)[0]
            p = run(flags + ["--output-dir", str(out)] + (["--resume"] if attempt else []), kill=kill, cwd=work)
            counts["launches"] += 1
            if p.returncode == -9:
                counts["kills"] += 1
                counts["unreadable"] += len(unreadable_checkpoints(out))
                continue
            if p.returncode != 0:
                raise SystemExit(f"chain {counts['chains']}: exit {p.returncode}\n{p.stderr[-3000:]}")
            break
        counts["chains"] += 1
        counts["reproduced"] += same_weights(final_weights(out), reference)
        counts["modified"] += (fingerprint(data) != before) + ((out / "my_notes.txt").read_text()
                                                               != "the user's own file, beside the run")
        print(f"  chain {counts['chains']}: {counts['kills']} kills so far", flush=True)
    return counts


# --- bad input -----------------------------------------------------------------------------------------

def _classify(p, named, skip_record=None, expect=None):
    """What a CLI did: the behaviour column of the table."""
    err = p.stderr
    if expect is not None:
        text, label = expect
        ok = p.returncode == 0 and text in p.stdout + err
        return label if ok else f"CRASH (exit {p.returncode}): {(err.strip().splitlines() or [''])[-1][:120]}"
    if skip_record is not None and p.returncode == 0:
        skipped = json.loads(skip_record.read_text()) if skip_record.is_file() else {"count": 0}
        return f"counted skip ({skipped['count']} in skipped.json)" if skipped["count"] else "ran, no skip counted"
    if p.returncode == 2 and "Traceback" not in err and str(named) in err:
        return f"clear error naming {Path(named).name}"
    return f"CRASH (exit {p.returncode}): {(err.strip().splitlines() or [''])[-1][:120]}"


def _cli(module, args, cwd):
    import os
    import subprocess

    return subprocess.run([sys.executable, "-m", f"minimask.{module}", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"})


def bad_input_cases(work):
    """[(case, behaviour)] and the number of user files modified by the CLIs (beyond the breakage itself)."""
    rows, modified = [], 0
    base = work / "base"
    ckpt = base / "checkpoint_0000004.npz"
    val_image = work / "shapes" / "images" / "val" / "000001.png"

    def coco_case(name, breakage, named_fn, skip=False, extra=()):
        nonlocal modified
        root = coco_copy(work / f"coco-{len(rows)}", splits=(("train", 3),))
        named = breakage(root)
        before = fingerprint(root)
        out = work / f"out-{len(rows)}"
        flags = TINY + ["--dataset", "coco", "--data-dir", str(root), "--train-split", "train", "--val-split",
                        "train", "--output-dir", str(out), *extra] + (["--skip-bad"] if skip else [])
        p = _cli("train", flags, work)
        modified += fingerprint(root) != before
        rows.append((name + (" (--skip-bad)" if skip else ""),
                     _classify(p, named_fn(root, named), out / "skipped.json" if skip else None)))

    def images(root):
        return sorted((root / "train").iterdir())

    def ann(root):
        return root / "annotations" / "instances_train.json"

    def edit(fn):
        def breakage(root):
            edit_annotations(root, "train", fn)
            return ann(root)
        return breakage

    def truncate_json(root):
        p = ann(root)
        p.write_text(p.read_text()[:-50])
        return p

    def remove_image(root):
        gone = images(root)[0]
        gone.unlink()
        return gone

    def garbage_image(root):
        images(root)[1].write_bytes(b"\xff\xd8 not really a jpeg")
        return images(root)[1]

    def thin_image(root):
        doc = json.loads(ann(root).read_text())
        im = doc["images"][0]
        from PIL import Image

        Image.fromarray(np.zeros((3, 1000, 3), np.uint8)).save(root / "train" / im["file_name"], format="JPEG")
        edit_annotations(root, "train", lambda d: (d["images"][0].update(width=1000, height=3), d.update(
            annotations=[a for a in d["annotations"] if a["image_id"] != im["id"]])))
        return root / "train" / im["file_name"]

    same = lambda root, named: named
    coco_case("annotation JSON truncated", truncate_json, same)
    coco_case("duplicate image id", edit(lambda d: d["images"].append(dict(d["images"][0]))), same)
    for skip in (False, True):
        coco_case("annotation of an image that does not exist", edit(lambda d: d["annotations"][0].update(
            image_id=999999)), same, skip)
        coco_case("image file missing", remove_image, same, skip)
        coco_case("box outside its image", edit(lambda d: d["annotations"][0].update(bbox=[630.0, 5, 300, 10])),
                  same, skip)
        coco_case("unknown category id", edit(lambda d: d["annotations"][0].update(category_id=999)), same, skip)
        coco_case("RLE size differs from the image", edit(lambda d: d["annotations"][0].update(
            segmentation={"size": [10, 10], "counts": "abc"})), same, skip)
    coco_case("image file is not an image", garbage_image, same)
    coco_case("image size in the JSON is wrong", edit(lambda d: d["images"][0].update(width=100)),
              lambda root, named: images(root)[0])
    coco_case("a 1000x3 image (too thin to resize)", thin_image, same)

    # the shapes generator pointed at a user's COCO folder (train/val split names)
    root = coco_copy(work / "user-coco", splits=(("train", 2), ("val", 1)))
    before = fingerprint(root)
    p = _cli("train", TINY + ["--data-dir", str(root), "--output-dir", str(work / "out-gen")], work)
    modified += fingerprint(root) != before
    rows.append(("train --data-dir <COCO folder> without --dataset coco", _classify(p, root)))
    p = _cli("evaluate", ["--checkpoint", str(ckpt), "--data-dir", str(root), "--output-dir", str(work / "ev0")], work)
    modified += fingerprint(root) != before
    rows.append(("evaluate a shapes checkpoint with --data-dir <COCO folder>", _classify(p, root)))

    # checkpoints broken on purpose
    def broken(kind):
        p = work / f"broken-{kind}" / "checkpoint_0000004.npz"
        p.parent.mkdir()
        data = bytearray(ckpt.read_bytes())
        if kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "bit-flipped":
            data[len(data) // 2] ^= 0xFF
        else:
            data = b""
        p.write_bytes(bytes(data))
        return p

    for kind in ("truncated", "bit-flipped", "empty"):
        bad = broken(kind)
        a = "an" if kind == "empty" else "a"
        rows.append((f"evaluate with {a} {kind} checkpoint", _classify(
            _cli("evaluate", ["--checkpoint", str(bad)], work), bad)))
        rows.append((f"predict with {a} {kind} checkpoint", _classify(
            _cli("predict", [str(val_image), "--checkpoint", str(bad)], work), bad)))
    run_dir = work / "resume-corrupt"
    shutil.copytree(base, run_dir)
    (run_dir / "checkpoint_0000004.npz").write_bytes(ckpt.read_bytes()[:1000])
    p = _cli("train", TINY + ["--data-dir", str(work / "shapes"), "--output-dir", str(run_dir), "--resume"], work)
    fell_back = ("falling back to", "fell back to the newest readable checkpoint, finished")
    rows.append(("--resume with a truncated newest checkpoint", _classify(p, None, expect=fell_back)))
    p = _cli("train", TINY + ["--data-dir", str(work / "shapes"), "--output-dir", str(base)], work)
    rows.append(("a new run into an --output-dir holding a run", _classify(p, base)))
    p = _cli("train", TINY + ["--data-dir", str(work / "shapes"), "--output-dir", str(base), "--resume", "--lr", "1"],
             work)
    rows.append(("--resume with a different --lr", _classify(p, base)))
    p = _cli("train", TINY + ["--data-dir", str(work / "shapes"), "--output-dir", str(work / "lr"), "--lr", "1e6"],
             work)
    rows.append(("--lr 1e6 (divergence)", "NonFiniteLoss: iteration and last good checkpoint named"
                 if p.returncode == 2 and "last good checkpoint" in p.stderr and "Traceback" not in p.stderr
                 else _classify(p, "?")))
    nan = work / "nan" / "checkpoint_0000004.npz"
    nan.parent.mkdir()
    with np.load(ckpt) as f:
        np.savez(nan, **{k: np.full_like(f[k], np.nan) if k.startswith("model.") and f[k].dtype.kind == "f"
                         else f[k] for k in f.files})
    rows.append(("evaluate a diverged (NaN) checkpoint: zero proposals", _classify(
        _cli("evaluate", ["--checkpoint", str(nan)], work), None, expect=("bbox AP 0.000", "ran: 0 detections, AP 0"))))
    rows.append(("predict with a diverged (NaN) checkpoint", _classify(
        _cli("predict", [str(val_image), "--checkpoint", str(nan)], work), None,
        expect=("0 detections", "ran: 0 detections drawn"))))
    not_image = work / "notes.png"
    not_image.write_text("not an image")
    rows.append(("predict on a file that is not an image", _classify(
        _cli("predict", [str(not_image), "--checkpoint", str(ckpt)], work), not_image)))
    rows.append(("evaluate --checkpoint model_final.npz (README)", _classify(
        _cli("evaluate", ["--checkpoint", str(base / "model_final.npz")], work), None,
        expect=("segm AP", "ran: COCOeval printed"))))
    return rows, modified


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to inject (at least)")
    p.add_argument("--seed", type=int, default=14, help="seeds the kill points")
    p.add_argument("--workdir", default=None, help="empty folder to work in (default: a new temp folder)")
    p.add_argument("--skip-bad-input", action="store_true", help="only the kill chains")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="minimask-faults-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from minimask.shapes import ShapesConfig, generate_shapes

    for split, n in (("train", 4), ("val", 1)):
        generate_shapes(work / "shapes", split, num_images=n, seed=0, config=ShapesConfig(image_size=64))
    print(f"kill chains in {work} ...", flush=True)
    c = kill_chains(work, args.kills, args.seed)
    rows, modified = [], 0
    if not args.skip_bad_input:
        print("bad-input cases ...", flush=True)
        try:
            rows, modified = bad_input_cases(work)
        except BaseException as e:   # pytest.skip from coco_files when no real COCO files are around
            if type(e).__name__ != "Skipped":
                raise
            print(f"bad-input cases skipped: {e}")
    print(f"\n== SIGKILL during checkpoint writes (seed {args.seed}; {c['launches']} launches of the training CLI)")
    print(f"{'kills injected (seeded random points of checkpoint writes)':<62} {c['kills']:>6}")
    print(f"{'resumed runs that reproduced the uninterrupted run exactly':<62} {c['reproduced']:>3}/{c['chains']:<2}")
    print(f"{'checkpoints left unreadable (target 0)':<62} {c['unreadable']:>6}")
    print(f"{'user files modified (target 0)':<62} {c['modified'] + modified:>6}")
    if rows:
        print(f"\n== bad input ({len(rows)} cases)\n{'case':<62} behaviour")
        for name, behaviour in rows:
            print(f"{name:<62} {behaviour}")
    crashes = sum(b.startswith("CRASH") for _, b in rows)
    bad = c["unreadable"] or c["modified"] or modified or c["reproduced"] != c["chains"] or crashes
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
