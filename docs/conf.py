"""Sphinx configuration of the minimask documentation site (built by `python tools/build_site.py`).

Stack: Sphinx + myst-nb (reads the chapters as already-executed notebooks, never runs them) +
autodoc (the API reference from the docstrings) + the Furo theme. Math is rendered in the browser
by MathJax 3.2 (SVG output), copied from the `sphinx-mathjax-offline` wheel into _static/mathjax by
the build script, so the pages need no network: plain static HTML with everything beside it.
"""

project = "minimask"
author = "the minimask developers"
copyright = "the minimask developers, MIT licence"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]

# the chapters arrive executed (by the notebook test at small sizes, or by tools/execute_chapters.py
# at full size); the site only renders what they printed and drew
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "minimask: Mask R-CNN from scratch in NumPy"
html_static_path = ["_static"]
html_show_sourcelink = False
html_copy_source = False

# MathJax 3 with SVG output from the local copy (relative to _static): every glyph is drawn as an
# SVG path, so nothing (no web font, no CDN) has to load from anywhere, even from file://
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {"svg": {"fontCache": "global"}}

autodoc_member_order = "bysource"
autodoc_preserve_defaults = True      # `xp=np` as written, not the repr of the numpy module
autodoc_default_options = {"members": True, "show-inheritance": False}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]


def _docstring_as_written(app, what, name, obj, options, lines):
    """Show each docstring verbatim (a literal block): minimask's docstrings are plain text laid out
    in columns (shapes, coordinate conventions), which reST would reflow or misread."""
    text = [line.rstrip() for line in lines]
    while text and not text[-1]:
        text.pop()
    if not text:
        return
    lines[:] = [".. code-block:: text", ""] + ["    " + line for line in text] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_as_written)
