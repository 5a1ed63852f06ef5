"""Where the data lives: one lookup order used by notebooks, benchmarks and training.

Order:   1. an explicit path argument
         2. the MINIMASK_DATA environment variable
         3. `shared/data` beside the repository (`<repo>/../shared/data`, repo = parent of the package)
         4. `shared/data` in any parent of the current directory (a notebook runs from `nbs/`)
Layout:  <data>/coco128/train2017/*.jpg and <data>/coco128/annotations/instances_train2017.json
Chapter: nbs/03_resnet_fpn.ipynb
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MINIMASK_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


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
        f"Set {ENV_VAR}=/path/to/data (the folder that contains coco128/) or pass the path explicitly."
    )
