"""Repository-wide pytest configuration (also applies to notebooks collected by nbval)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Never compare these outputs of notebook cells: stderr (progress bars, warnings), widget views
# (their model ids are random), HTML/JS reprs. Images are never compared by nbval either.
_SKIP_COMPARE = ("stderr", "application/vnd.jupyter.widget-view+json", "text/html", "application/javascript")


def pytest_collectstart(collector):
    path = getattr(collector, "path", None)
    if path is not None and Path(path).suffix == ".ipynb":
        collector.skip_compare += _SKIP_COMPARE


def pytest_configure(config):
    # The accelerator's library (titn_edu.accel) is built in a folder of this test session, not the user's cache.
    if "TITN_EDU_CACHE_DIR" not in os.environ:
        config._titn_edu_cache = os.environ["TITN_EDU_CACHE_DIR"] = tempfile.mkdtemp(prefix="titn_edu_cache_")
    # Tests and notebooks read data from the offline data root when it exists (see README).
    shared = Path(__file__).resolve().parent.parent / "shared" / "data"
    if "TITN_EDU_DATA" not in os.environ and shared.is_dir():
        os.environ["TITN_EDU_DATA"] = str(shared)


def pytest_unconfigure(config):
    folder = getattr(config, "_titn_edu_cache", None)
    if folder is not None:  # the session's own kernel-choice folder: removed with the session
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("TITN_EDU_CACHE_DIR", None)
