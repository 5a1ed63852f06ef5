"""The documentation site builds offline from this run's executed chapters, and every chapter page
shows its figures.

tests/test_notebooks.py executes each chapter once (small sizes) and saves it to
$MINIMASK_SAVE_EXECUTED (conftest.py points that at a temporary folder for the run); this test
renders those copies with tools/build_site.py, so a chapter that no longer executes, or a page that
no longer renders, fails the default run. Run alone, it falls back to the executed chapters committed
in nbs/. The build itself turns every Sphinx warning into an error.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))


def _build_site_module():
    spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(600)
def test_site_builds_offline_with_every_chapter(tmp_path):
    for name in ("sphinx", "myst_nb", "furo"):
        pytest.importorskip(name, reason="the site needs the 'docs' extra (pip install -e '.[docs]')")
    build_site = _build_site_module()
    executed = Path(os.environ.get("MINIMASK_SAVE_EXECUTED", tmp_path / "none"))
    info = build_site.build(tmp_path / "site", executed if executed.is_dir() else None)
    site = tmp_path / "site"
    print(f"site built in {info['seconds']:.1f} s, {info['bytes'] / 1e6:.1f} MB; chapters from "
          f"{sorted({str(p.parent) for p in info['sources'].values()})}")

    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'src="_images/architecture.png"' in index or "architecture.png" in index
    assert (site / "_images" / "architecture.png").exists() or list(site.rglob("architecture*.png"))
    for nb in CHAPTERS:
        assert f'href="chapters/{nb.stem}.html"' in index, f"{nb.stem} missing from the landing page"
        page = (site / "chapters" / f"{nb.stem}.html").read_text(encoding="utf-8")
        images = re.findall(r'<img[^>]+src="([^"]+)"', page)
        assert images, f"{nb.stem}: no figure on its page"
        for src in images:
            assert (site / "chapters" / src).resolve().exists(), f"{nb.stem}: image {src} is not beside the page"
        assert "Traceback (most recent call last)" not in page, f"{nb.stem}: an error output is on its page"
    # math is rendered by the local MathJax, the API reference comes from the docstrings
    assert (site / "_static" / "mathjax" / "tex-svg.js").exists()
    assert "mathjax/tex-svg.js" in (site / "chapters" / "02_layers_and_losses.html").read_text(encoding="utf-8")
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("minimask.roi_align.roi_align", "minimask.nms.nms", "minimask.gradcheck.gradcheck"):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"
    assert "Boxes:" in api                                   # docstrings shown as written, conventions included
    exercises_page = (site / "exercises.html").read_text(encoding="utf-8")
    assert "smooth_l1_backward" in exercises_page
