"""Where the data lives: one lookup order used by notebooks, benchmarks and training.

Order:   1. an explicit path argument
         2. the MINIMASK_DATA environment variable (when set, steps 3-4 are skipped: it is the only place)
         3. `shared/data` beside the repository (`<repo>/../shared/data`, repo = parent of the package)
         4. `shared/data` in any parent of the current directory (a notebook runs from `nbs/`)
Layout:  <data>/coco128/train2017/*.jpg and <data>/coco128/annotations/instances_train2017.json
Sample:  the package ships 10 coco128 images (CC BY 2.0 or "no known copyright restrictions", listed in
         sample_coco/ATTRIBUTION.md) with their original annotations, in coco128's layout at SAMPLE_DIR.
         `coco128_or_sample()` is the chapters' lookup: coco128 when steps 1-4 find it, else the sample.
         `coco128_dir()` (the `--preset coco128` lookup) never falls back: that preset means coco128.
Chapter: nbs/03_resnet_fpn.ipynb
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MINIMASK_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_coco"   # train2017/*.jpg, annotations/, ATTRIBUTION.md


def _candidates():
    """The automatic places to look (steps 3 and 4), in order, without duplicates."""
    seen, out = set(), []
    cwd = Path.cwd().resolve()
    for base in [REPO_ROOT, cwd, *cwd.parents]:
        for c in (base.parent / "shared" / "data", base / "shared" / "data"):
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def data_dir(explicit=None):
    """The data folder: `explicit`, else $MINIMASK_DATA, else a `shared/data` found nearby, else None.

    An explicit path or the environment variable is returned as given (the caller said so);
    the automatic candidates are returned only when they exist.
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for c in _candidates():
        if c.is_dir():
            return c
    return None


def coco128_dir(explicit_data=None):
    """`<data>/coco128`, checked to hold `train2017/` and `annotations/`; FileNotFoundError otherwise.

    The error names every place looked at and how to point minimask at the data ($MINIMASK_DATA).
    """
    data = data_dir(explicit_data)
    if data is not None:
        looked = [data / "coco128"]
    else:
        looked = [c / "coco128" for c in _candidates()]
    for d in looked:
        if (d / "train2017").is_dir() and (d / "annotations").is_dir():
            return d
    where = "\n  ".join(str(d) for d in looked)
    raise FileNotFoundError(
        f"coco128 not found (need train2017/ and annotations/ inside). Looked in:\n  {where}\n"
        f"Set {ENV_VAR}=/path/to/data (the folder that contains coco128/) or pass the path explicitly.\n"
        f"(The package ships a 10-image sample in coco128's layout, {SAMPLE_DIR}: the chapters use it when "
        f"coco128 is absent; to train on it on purpose, pass --data-dir {SAMPLE_DIR}.)"
    )


def coco128_or_sample(explicit_data=None):
    """(root, name): coco128's folder and "coco128" when found, else SAMPLE_DIR and "sample".

    Both roots have coco128's layout (`root/train2017/*.jpg`, `root/annotations/instances_train2017.json`),
    so `minimask.data.coco_paths(root, "train2017")` reads either. The chapters call this and print `name`.
    """
    try:
        return coco128_dir(explicit_data), "coco128"
    except FileNotFoundError:
        return SAMPLE_DIR, "sample"


def shown(path):
    """`path` as a reader should see it printed: relative to the repository when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
