"""Build the documentation site: static HTML that opens offline, in build/site/index.html.

    pip install -e '.[docs]'
    python tools/build_site.py                          # from the executed chapters committed in nbs/
    python tools/build_site.py --notebooks DIR          # from executed copies elsewhere (the test run's)
    python tools/execute_chapters.py && python tools/build_site.py     # full size, from scratch

Steps: stage docs/ (conf.py, index.md, design.md) with the chapters, a generated API reference
(autodoc over every module of the package) and exercise list, the architecture figure drawn by
tools/draw_architecture.py, and MathJax 3 (SVG output) copied from the `sphinx-mathjax-offline` wheel; run
Sphinx (myst-nb renders the notebooks as they were executed, running nothing); then check that no
page loads anything from the network. The chapters are never executed here: the notebook test
(`tests/test_notebooks.py`, small sizes) or tools/execute_chapters.py (full size) does that once.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
DOCS = ROOT / "docs"
MARKER = ".minimask-site"          # written into every folder this script creates, checked before wiping one

# API reference sections, in the order of the Mask R-CNN figure
API_SECTIONS = [
    ("Arrays, the tape, gradient checks (chapter 00)", ["backend", "tape", "module", "gradcheck", "init"]),
    ("Convolution (chapter 01)", ["conv", "utils"]),
    ("Layers, losses, optimizer (chapter 02)", ["layers", "norms", "pooling", "shape_ops", "losses", "optim"]),
    ("Backbone: ResNet and FPN (chapter 03)", ["resnet", "fpn", "weights"]),
    ("Boxes, anchors, matching, the RPN (chapters 04-05)", ["boxes", "anchors", "matching", "rpn"]),
    ("Non-maximum suppression (chapter 06)", ["nms"]),
    ("RoIPool, RoIAlign, the pooler (chapter 07)", ["roi_pool", "roi_align", "roi_align_max", "roi_warp", "poolers"]),
    ("CUDA kernels (chapter 08)", ["kernels", "cuda_cpu"]),
    ("Box and mask heads (chapters 09-10)", ["box_head", "mask_head", "mask_softmax", "mask_mlp", "roi_heads"]),
    ("The whole model (chapter 11)", ["transform", "model", "config"]),
    ("Training, data, evaluation (chapters 12-13)", ["shapes", "data", "coco_check", "paths", "builders", "train",
                                                     "checkpoint", "rundir", "errors", "coco_eval", "evaluate",
                                                     "predict", "viz", "distributed"]),
    ("Exercises (every chapter)", ["exercises"]),
    ("The speed engines (minimask/fast/, appendix chapter 14)",
     ["fast", "fast.conv", "fast.conv_paths", "fast.winograd", "fast.roi_align", "fast.roi_pool", "fast.nms",
      "fast.host"]),
]


def chapters():
    return sorted(NBS.glob("[0-9][0-9]_*.ipynb"))


def chapter_files_from_readme():
    """{'00': '`backend.py`, ...'} from the README's chapter table (the one place that lists them)."""
    rows = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\d\d)\s*\|\s*`nbs/[^`]+`\s*\|[^|]*\|\s*(.+?)\s*\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _title(nb_path):
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    first = nb.cells[0].source.splitlines()[0] if nb.cells else nb_path.stem
    return first.lstrip("# ").strip()


def _fresh_dir(path):
    """Empty `path` for this script's output, refusing to delete a folder it did not create."""
    if path.exists():
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise SystemExit(f"{path} exists and was not written by build_site.py; remove it or pick --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("written by tools/build_site.py\n")


def copy_mathjax(dest):
    """MathJax 3.2 with SVG output (tex-svg.js, glyphs as SVG paths: no web fonts, works from file://)
    and the TeX extensions it autoloads, from the `sphinx-mathjax-offline` wheel."""
    import importlib.metadata as md

    try:
        files = md.files("sphinx-mathjax-offline") or []
    except md.PackageNotFoundError:
        files = []
    js = [f for f in files if f.name == "tex-svg.js"]
    if not js:
        raise SystemExit("sphinx-mathjax-offline is missing (MathJax for the site): pip install -e '.[docs]'")
    src = Path(js[0].locate()).parent
    dest.mkdir(parents=True)
    shutil.copy2(src / "tex-svg.js", dest / "tex-svg.js")
    shutil.copytree(src / "input" / "tex" / "extensions", dest / "input" / "tex" / "extensions")


def write_api(path):
    out = ["# API reference", "",
           "Generated from the docstrings of every module (shown as written: shapes and coordinate conventions "
           "are laid out in columns).", ""]
    listed = set()
    for title, modules in API_SECTIONS:
        out += [f"## {title}", ""]
        for m in modules:
            listed.add(m)
            # autodoc writes reST, so it runs inside an eval-rst block (MyST would read its output as Markdown)
            out += [f"### `minimask.{m}`", "", "```{eval-rst}", f".. automodule:: minimask.{m}", "   :members:",
                    "```", ""]
    found = [p.stem for p in (ROOT / "minimask").glob("*.py") if p.stem != "__init__"]
    found += [f"fast.{p.stem}" for p in (ROOT / "minimask" / "fast").glob("*.py") if p.stem != "__init__"]
    missing = sorted(m for m in found if m not in listed)
    if missing:
        raise SystemExit(f"modules missing from the API reference sections: {missing}")
    path.write_text("\n".join(out), encoding="utf-8")


def write_exercises(path):
    sys.path.insert(0, str(ROOT))
    from minimask import exercises

    out = ["# Exercises", "",
           "Every chapter ends with these. Write the function in the chapter's stub cell, run the cell below it, and",
           "`minimask.exercises.check` says whether it is right, naming the mistake when it recognises one.",
           "Reference solutions: `nbs/solutions/chNN.py`.", "",
           "| exercise | chapter | you write | the task |", "|---|---|---|---|"]
    for ex_id, e in sorted(exercises.REGISTRY.items()):
        out.append(f"| {ex_id} | {e.chapter:02d} | `{e.name}` | {e.task.replace('|', '/')} |")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def stage(src, notebooks_dir):
    _fresh_dir(src)
    for name in ("conf.py", "design.md", "site.md"):
        shutil.copy2(DOCS / name, src / name)
    (src / "_static").mkdir()
    copy_mathjax(src / "_static" / "mathjax")
    sys.path.insert(0, str(ROOT / "tools"))
    from draw_architecture import draw

    draw(src / "architecture.png")
    files = chapter_files_from_readme()
    (src / "chapters").mkdir()
    table = ["| # | chapter | package files |", "|---|---|---|"]
    toc, sources = [], {}
    for nb in chapters():
        chosen = notebooks_dir / nb.name if notebooks_dir and (notebooks_dir / nb.name).exists() else nb
        sources[nb.name] = chosen
        shutil.copy2(chosen, src / "chapters" / nb.name)
        num = nb.name[:2]
        table.append(f"| {num} | [{_title(chosen)}](chapters/{nb.stem}) | {files.get(num, '')} |")
        toc.append(f"chapters/{nb.stem}")
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    index = index.replace("CHAPTER_TABLE", "\n".join(table)).replace("CHAPTER_TOCTREE", "\n".join(toc))
    (src / "index.md").write_text(index, encoding="utf-8")
    write_api(src / "api.md")
    write_exercises(src / "exercises.md")
    return sources


def check_offline(site):
    """Every page must load its scripts, styles and images from the site itself."""
    bad = []
    pattern = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["']((?:https?:)?//[^"']+)""", re.I)
    for page in site.rglob("*.html"):
        for url in pattern.findall(page.read_text(encoding="utf-8", errors="replace")):
            bad.append(f"{page.relative_to(site)}: {url}")
    if bad:
        raise SystemExit("pages load from the network:\n  " + "\n  ".join(bad[:20]))


def build(out, notebooks_dir=None, strict=True, quiet=True):
    t0 = time.perf_counter()
    src = out.parent / (out.name + "-src")
    sources = stage(src, notebooks_dir)
    _fresh_dir(out)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-d", str(src / ".doctrees")]  # cache off the site
    if strict:
        cmd += ["-W", "--keep-going"]
    if quiet:
        cmd += ["-q"]
    cmd += [str(src), str(out)]
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"sphinx-build failed (exit {result.returncode}): {' '.join(cmd)}")
    (out / MARKER).write_text("written by tools/build_site.py\n")
    check_offline(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": time.perf_counter() - t0, "bytes": size, "index": out / "index.html", "sources": sources}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebooks", type=Path, default=None,
                    help="folder of executed chapters to use (default: the committed, executed nbs/)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "site", help="output folder (default build/site)")
    ap.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    args = ap.parse_args(argv)
    info = build(args.out.resolve(), args.notebooks.resolve() if args.notebooks else None, strict=not args.no_strict)
    print(f"site: {info['index']}  ({info['bytes'] / 1e6:.1f} MB, built in {info['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
