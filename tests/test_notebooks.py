"""Execute every chapter notebook top to bottom (small sizes), and check its pictures render.

Each notebook runs in a fresh kernel with MINIMASK_SMALL=1 and the notebook folder as working
directory. A notebook fails the test when any cell raises, or when it produces no PNG image
(every chapter promises pictures).
"""

import os
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "nbs"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_chapters_exist():
    assert NOTEBOOKS, f"no chapter notebooks found in {NB_DIR}"


@pytest.mark.notebook
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="notebook runner needs the 'dev' extra")
    nbclient = pytest.importorskip("nbclient", reason="notebook runner needs the 'dev' extra")
    monkeypatch.setenv("MINIMASK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    )
    client.execute()
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, f"{path.name} executed but showed no picture"
    if os.environ.get("MINIMASK_SAVE_EXECUTED"):
        out_dir = Path(os.environ["MINIMASK_SAVE_EXECUTED"])
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
