"""Execute every chapter notebook top to bottom (small sizes), and check its pictures render.

Each notebook runs in a fresh kernel with MINIMASK_SMALL=1 and the notebook folder as working
directory. A notebook fails the test when any cell raises, or when it produces no PNG image
(every chapter promises pictures).

Chapters that look data up (`minimask.paths`) run a second time with MINIMASK_DATA pointing at an
empty folder — as on a fresh clone with no ../shared — so they must fall back to the sample shipped
in the package; when MINIMASK_DATA is set, the automatic ../shared/data candidates are never looked
at (paths.py), so this holds on CI machines that have ../shared too. Both runs must print which data
they use ("data: coco128 (...)" or "data: sample (...)").
"""

import os
import re
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "nbs"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
# chapters that call the data lookup (`paths.coco128_or_sample()` ...); the word "paths" in prose does not count
DATA_NOTEBOOKS = [p for p in NOTEBOOKS if re.search(r"\bpaths\.\w+\(", p.read_text())]


def test_chapters_exist():
    assert NOTEBOOKS, f"no chapter notebooks found in {NB_DIR}"
    assert DATA_NOTEBOOKS, "no chapter reads COCO data through minimask.paths"


def _execute(path, monkeypatch):
    """Run the notebook in a fresh kernel; return (executed notebook, its printed text)."""
    nbformat = pytest.importorskip("nbformat", reason="notebook runner needs the 'dev' extra")
    nbclient = pytest.importorskip("nbclient", reason="notebook runner needs the 'dev' extra")
    monkeypatch.setenv("MINIMASK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    )
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name} executed but showed no picture"
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    return nb, text


@pytest.mark.notebook
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    nb, text = _execute(path, monkeypatch)
    if path in DATA_NOTEBOOKS:
        assert re.search(r"data: (coco128|sample) \(", text), f"{path.name} does not say which data it uses"
    if os.environ.get("MINIMASK_SAVE_EXECUTED"):
        import nbformat

        out_dir = Path(os.environ["MINIMASK_SAVE_EXECUTED"])
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)


@pytest.mark.notebook
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", DATA_NOTEBOOKS, ids=[p.stem for p in DATA_NOTEBOOKS])
def test_notebook_executes_without_data(path, monkeypatch, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("MINIMASK_DATA", str(empty))   # the only place looked at: no coco128 anywhere
    _, text = _execute(path, monkeypatch)
    assert "data: sample (" in text, f"{path.name} did not fall back to the package's sample"
    assert "data: coco128" not in text


def test_committed_chapters_show_only_the_sample():
    """The executed chapters stored in nbs/ may carry only images the repository may ship: every
    chapter that says which data it used must have used the package's sample (tools/execute_chapters.py
    points the data lookup at an empty folder), and no stored output names a machine's data folder."""
    import json

    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        text = "".join(
            "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            for cell in cells if cell["cell_type"] == "code" for out in cell.get("outputs", [])
        )
        assert "data: coco128" not in text, f"{path.name} is stored with coco128 outputs (licences): re-execute it"
        assert "shared/data" not in text, f"{path.name} stores a local data path in its outputs"
