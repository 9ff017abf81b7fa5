"""Sphinx configuration of the pyro-aevb documentation: ``sphinx-build -W docs docs/_build``."""

import pyro_aevb

project = "pyro-aevb"
author = "the pyro-aevb authors"
release = version = pyro_aevb.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 shipped inside the package and copied into _static/: the pages render their
    # math without reaching a CDN (the build machines and many readers are offline)
    "sphinx-mathjax-offline",
    "myst_nb",  # Markdown pages (the README's guides) and the tutorials with their outputs
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "tutorials/.ipynb_checkpoints"]

# The tutorials are rendered from their committed outputs, never re-executed.
nb_execution_mode = "off"
# Headings of the README become link targets (``#bring-your-own-pyro-code``).
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "amsmath"]
# The README links to files of the repository (benchmark results, scripts) that are no
# pages of the site: on GitHub they resolve, here they stay plain links.
suppress_warnings = ["myst.xref_missing"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# torch's docstrings (e.g. of an overridden ``Distribution.expand``) are not RST
autodoc_inherit_docstrings = False
napoleon_google_docstring = False
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"pyro-aevb {version}"
