"""Execute the chapters and store them with their outputs and figures, so they read without running.

    python tools/execute_chapters.py                 # every chapter, full size, written back into nbs/
    python tools/execute_chapters.py 03 12           # only chapters 03 and 12
    python tools/execute_chapters.py --small --out build/executed-small    # CI sizes, elsewhere

Each chapter runs top to bottom in a fresh kernel with nbs/ as working directory (as
tests/test_notebooks.py does, but without MINIMASK_SMALL unless --small). A chapter that raises is
reported and not written, so a committed chapter always shows a complete, successful run. Cell
timing metadata is not recorded (the files change only when an output does). Figures come out of the
inline backend as PNG; a large one that is mostly photograph (a COCO image, a feature map) is stored
as JPEG (quality 85) when that is less than half the size, which keeps all chapters together well
under 20 MB. The last column printed is each chapter's size in bytes.

Licences: the committed chapters may show only images that the repository may carry, so by default
the data lookup points at an empty folder (MINIMASK_DATA) and the chapters use the package's sample
(CC BY 2.0 / no known copyright restrictions, minimask/sample_coco/ATTRIBUTION.md), never coco128.
`--local-data` keeps your own data lookup (coco128 when found): for reading, not for committing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def execute(path, small=False, timeout=7200, data_dir=None):
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    env.pop("MINIMASK_SMALL", None)
    if small:
        env["MINIMASK_SMALL"] = "1"
    if data_dir is not None:
        env["MINIMASK_DATA"] = str(data_dir)
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)           # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                         resources={"metadata": {"path": str(NBS)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    for cell in nb.cells:            # execution counts from 1 in each chapter, no stray metadata
        cell.get("metadata", {}).pop("execution", None)
    return nb


def shrink_images(nb, min_bytes=120_000, quality=85):
    """Store big photo-like PNG outputs as JPEG (image/jpeg) when that halves them; plots stay PNG."""
    import base64
    import io

    from PIL import Image

    saved = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            png = base64.b64decode(data["image/png"])
            if len(png) < min_bytes:
                continue
            im = Image.open(io.BytesIO(png))
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, "white")
                flat.paste(im, mask=im.split()[-1])
                im = flat
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
            if buf.tell() < len(png) / 2:
                del data["image/png"]
                data["image/jpeg"] = base64.b64encode(buf.getvalue()).decode("ascii")
                saved += len(png) - buf.tell()
    return saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    ap.add_argument("--small", action="store_true", help="MINIMASK_SMALL=1: the quick sizes of the test suite")
    ap.add_argument("--out", type=Path, default=NBS, help="where to write the executed chapters (default: nbs/)")
    ap.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    ap.add_argument("--local-data", action="store_true",
                    help="use coco128 when found (default: the package's sample only, as committed chapters must)")
    args = ap.parse_args(argv)
    import tempfile

    import nbformat

    no_data = None if args.local_data else Path(tempfile.mkdtemp(prefix="minimask-no-data-"))

    paths = sorted(NBS.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        wanted = {c.zfill(2) for c in args.chapters}
        paths = [p for p in paths if p.name[:2] in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    failed, total = [], 0
    for path in paths:
        t0 = time.perf_counter()
        try:
            nb = execute(path, small=args.small, timeout=args.timeout, data_dir=no_data)
        except Exception as e:  # report and go on with the next chapter; the file stays as it was
            failed.append(path.name)
            print(f"{path.name:42s} FAILED after {time.perf_counter() - t0:7.1f} s: {type(e).__name__}: "
                  f"{str(e).splitlines()[-1] if str(e) else ''}", flush=True)
            continue
        shrink_images(nb)
        out = args.out / path.name
        nbformat.write(nb, out)
        size = out.stat().st_size
        total += size
        print(f"{path.name:42s} {time.perf_counter() - t0:7.1f} s {size:10d}", flush=True)
    print(f"{'total':42s} {'':9s} {total:10d} bytes")
    if failed:
        sys.exit(f"chapters that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
