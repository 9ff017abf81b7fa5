"""The documentation site builds with warnings as errors, renders the docstrings' math and
documents every public name."""

import subprocess
import sys
from pathlib import Path

import pytest

import pyro_aevb

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("furo")

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         str(DOCS), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_with_warnings_as_errors(site):
    for page in ("index.html", "guide.html", "api/models.html", "tutorials/02_vae.html"):
        assert (site / page).exists(), page
    # the build writes only into its output folder: nothing left in the sources
    assert not (DOCS / "jupyter_execute").exists()
    assert not (DOCS.parent / "jupyter_execute").exists()


def test_every_tutorial_is_in_the_docs():
    listed = (DOCS / "tutorials.md").read_text()
    notebooks = sorted(p.stem for p in (DOCS.parent / "tutorials").glob("*.ipynb"))
    assert notebooks and all(f"tutorials/{name}" in listed for name in notebooks)


def test_docstring_math_is_rendered_by_mathjax(site):
    html = (site / "api" / "models.html").read_text()
    assert "mathjax" in html.lower()
    # offline: the page loads the MathJax copied into the site, never a CDN
    assert 'src="../_static/mathjax/tex-chtml.js"' in html
    assert "cdn.jsdelivr" not in html and "mathjax.org" not in html
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists()
    # FactorAnalysis.posterior: a raw docstring, so \theta is a symbol, not a tab
    assert r"p_\theta(z \mid x)" in html


def test_the_tutorials_are_shown_with_their_committed_outputs(site):
    html = (site / "tutorials" / "01_factor_analysis.html").read_text()
    assert "<img" in html  # the figures of the committed run, nothing re-executed


def test_every_public_name_is_documented(site):
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    documented = {name for objects in inventory.values() for name in objects}
    missing = []
    for name in pyro_aevb.__all__:
        obj = getattr(pyro_aevb, name)
        full = f"{obj.__module__}.{obj.__qualname__}"
        if full not in documented:
            missing.append(full)
    assert not missing, f"public names absent from the API pages: {missing}"
