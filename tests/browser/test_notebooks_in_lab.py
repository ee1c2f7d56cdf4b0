"""Every course notebook, opened in JupyterLab in headless Chromium, runs clean and its explorers react.

For each notebooks/*.ipynb (whatever exists when the tests are collected): clear the outputs,
Run All Cells, wait for the run to end and the kernel to be idle; then no cell may show an
error, every non-empty code cell must have run and every widget must render. Each explorer
(an `ipywidgets.interactive`, controls beside an Output widget, or a cell marked `# EXPLORER`
or tagged `explorer`) gets each control moved to a non-default value through the page, and
its output must change without an error. A screenshot of every notebook is saved (see
README.md in this folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_jupyterlab(lab, notebook):
    report = lab.run_notebook(notebook)
    assert report.problems == [], report.describe()
