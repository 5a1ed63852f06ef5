"""Regenerate the small COCO sample shipped in the package (minimask/sample_coco) from coco128.

Usage:   python tools/make_sample.py [--coco128 /path/to/coco128] [--out minimask/sample_coco]
Rules:   at most 10 coco128 images, each under COCO licence 4 ("Attribution License", CC BY 2.0) or
         7 ("No known copyright restrictions"), together under 2 MB (images, JSON and attribution file).
What:    the JPEGs copied byte for byte; annotations/instances_train2017.json holds coco128's `info`,
         `licenses` and all 80 `categories` unchanged, and the `images` and `annotations` records of the
         chosen images unchanged (same ids, segmentation, bbox, area, iscrowd), in coco128's order;
         ATTRIBUTION.md lists each image's file name, id, Flickr URL and licence.
Layout:  the same as coco128 (train2017/*.jpg, annotations/instances_train2017.json), so everything
         that reads coco128 reads the sample (minimask.paths.coco128_or_sample picks one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from minimask import paths  # noqa: E402

# The chosen images (coco128 / COCO train2017 ids). 544 is the only eligible image with a crowd (RLE)
# annotation; 508 is an image with no annotations (COCO has such images; chapter 13 shows them).
SAMPLE_IDS = (86, 89, 127, 309, 450, 471, 508, 542, 544, 599)
ALLOWED_LICENSES = (4, 7)          # CC BY 2.0; no known copyright restrictions
MAX_IMAGES = 10
MAX_BYTES = 2_000_000              # the whole sample folder
SPLIT = "train2017"
ANN_NAME = f"instances_{SPLIT}.json"


def build(coco128: Path, ids=SAMPLE_IDS):
    """(doc, images) for `ids`: the filtered instances dict and the list of coco128 image records."""
    doc = json.loads((coco128 / "annotations" / ANN_NAME).read_text())
    wanted = set(ids)
    images = [im for im in doc["images"] if im["id"] in wanted]
    missing = wanted - {im["id"] for im in images}
    if missing:
        raise SystemExit(f"image ids {sorted(missing)} are not in {coco128}")
    if len(images) > MAX_IMAGES:
        raise SystemExit(f"{len(images)} images chosen; the sample may hold at most {MAX_IMAGES}")
    bad = [(im["id"], im["license"]) for im in images if im["license"] not in ALLOWED_LICENSES]
    if bad:
        raise SystemExit(f"(id, licence) {bad}: only licences {ALLOWED_LICENSES} may be shipped")
    out = {k: v for k, v in doc.items() if k not in ("images", "annotations")}
    out["images"] = images
    out["annotations"] = [a for a in doc["annotations"] if a["image_id"] in wanted]
    return out, images


def attribution(doc) -> str:
    """ATTRIBUTION.md: one row per image with its Flickr URL and licence (name and URL)."""
    lic = {entry["id"]: entry for entry in doc["licenses"]}
    rows = [
        f"| {im['file_name']} | {im['id']} | {im['flickr_url']} | {lic[im['license']]['name']} | "
        f"{lic[im['license']]['url']} |"
        for im in doc["images"]
    ]
    return "\n".join([
        "# Sample images: sources and licences",
        "",
        f"{len(doc['images'])} images of COCO train2017 (the first 128 of which form coco128), with their original",
        "COCO instance annotations (`annotations/instances_train2017.json`, copied unchanged: same ids,",
        "segmentation, bbox, area, iscrowd; all 80 categories). Written by `tools/make_sample.py`.",
        "",
        "- Images: each is a Flickr photo under the licence given below (COCO's `images[].license`).",
        "  \"Attribution License\" is CC BY 2.0: credit the author (via the Flickr URL) and link the licence.",
        "  \"No known copyright restrictions\" is the Flickr Commons statement.",
        "- Annotations: © COCO Consortium, CC BY 4.0 (https://cocodataset.org/#termsofuse).",
        "- COCO: T.-Y. Lin et al., \"Microsoft COCO: Common Objects in Context\", ECCV 2014.",
        "",
        "| file | COCO id | Flickr URL | licence | licence URL |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])


def write(coco128: Path, out: Path, ids=SAMPLE_IDS) -> int:
    """Write the sample into `out` (replacing only the files this tool writes); return its size in bytes."""
    doc, images = build(coco128, ids)
    (out / SPLIT).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    keep = {im["file_name"] for im in images}
    extra = sorted(f.name for f in (out / SPLIT).glob("*.jpg") if f.name not in keep)
    if extra:   # never delete what we may not have written: say so and stop
        raise SystemExit(f"{out / SPLIT} holds images outside the sample ({', '.join(extra)}); remove them first")
    for im in images:
        shutil.copyfile(coco128 / SPLIT / im["file_name"], out / SPLIT / im["file_name"])
    (out / "annotations" / ANN_NAME).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    (out / "ATTRIBUTION.md").write_text(attribution(doc))
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if total >= MAX_BYTES:
        raise SystemExit(f"the sample is {total} bytes; it must stay under {MAX_BYTES}")
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco128", default=None, help="the coco128 folder (default: found as minimask.paths finds it)")
    p.add_argument("--out", default=str(paths.SAMPLE_DIR), help="where to write the sample")
    args = p.parse_args(argv)
    coco128 = Path(args.coco128) if args.coco128 else paths.coco128_dir()
    total = write(coco128, Path(args.out))
    print(f"wrote {len(SAMPLE_IDS)} images to {args.out}: {total} bytes in all")


if __name__ == "__main__":
    main()
