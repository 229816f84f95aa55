"""Sphinx configuration: MyST Markdown pages, the reference generated from the code (``_ext/sparsity_docs.py``).

Build: ``.venv/bin/python -m sphinx -W --keep-going -n -b html docs docs/_build/html`` (``tests/test_docs.py``).
"""

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path[:0] = [ROOT, os.path.join(DOCS, "_ext")]

project = "Sparse pre-training for MaxText"
author = "The sparsity authors"
copyright = "2026, the sparsity authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sparsity_docs",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # docstrings say what each argument is
napoleon_attr_annotations = False

html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {"show_toc_level": 2}
