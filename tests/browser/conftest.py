"""Session fixtures for the browser tests: one JupyterLab server and one headless Chromium.

Environment:
  CI                             set (true/1/yes): a missing Chromium or Playwright fails the tests
                                 instead of skipping them.
  TITN_EDU_CHROMIUM              the Chromium executable (default: `chromium` on PATH).
  TITN_EDU_BROWSER_SCREENSHOTS   where the screenshots and the JupyterLab server log go
                                 (default: tests/browser/screenshots, not committed).
  TITN_EDU_BROWSER_TIMEOUT       seconds allowed to run all cells of one notebook (default 600: notebook 08,
                                 the longest, runs all its cells in about 215 s in JupyterLab on two cores;
                                 shared hosts have run up to twice as slow).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

from labdriver import LabDriver, LabServer, find_chromium, in_ci, launch_chromium, new_workdir

# The fixture notebooks are inputs of the harness tests, not course notebooks for nbval.
collect_ignore_glob = ["fixtures/*"]

REPORTS = pytest.StashKey[LabDriver]()
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _unavailable(reason: str):
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        _unavailable(
            "no system Chromium: install it (Debian: apt-get install -y chromium) or set TITN_EDU_CHROMIUM"
        )
    return path


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    return Path(os.environ.get("TITN_EDU_BROWSER_SCREENSHOTS", HERE / "screenshots")).resolve()


@pytest.fixture(scope="session")
def lab(chromium_path, screenshot_dir, request):
    """A `LabDriver`: JupyterLab serving this repository, driven by headless Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the Python package `playwright` is not installed (pip install -e '.[dev]')")
    if importlib.util.find_spec("jupyterlab") is None:
        _unavailable("JupyterLab is not installed (pip install -e '.[dev]')")

    # A CI runner stops a job with SIGTERM: turn it into KeyboardInterrupt so the teardown below runs.
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    workdir = new_workdir()
    server = LabServer(REPO, workdir, log_path=screenshot_dir / "jupyter-lab.log")
    playwright = context = driver = None
    try:
        server.start()
        playwright = sync_playwright().start()
        context = launch_chromium(playwright, chromium_path, workdir / "chromium-profile")
        timeout = float(os.environ.get("TITN_EDU_BROWSER_TIMEOUT", "600"))
        driver = LabDriver(server, context, screenshot_dir, run_timeout=timeout)
        request.config.stash[REPORTS] = driver
        yield driver
    finally:
        # Browser first (it holds kernel connections), then the server and its kernels.
        for close in (
            lambda: driver and driver.close(),
            lambda: context and context.close(),
            lambda: playwright and playwright.stop(),
            server.stop,
        ):
            try:
                close()
            except Exception:  # noqa: BLE001 - keep tearing down
                pass
        shutil.rmtree(workdir, ignore_errors=True)
        if signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    driver = config.stash.get(REPORTS, None)
    if driver is None or not driver.reports:
        return
    terminalreporter.section("notebooks in JupyterLab (headless Chromium)")
    terminalreporter.write_line(f"screenshots and the JupyterLab log: {driver.screenshot_dir}")
    for r in driver.reports:
        status = "interrupted" if not r.complete else "ok" if not r.problems else f"{len(r.problems)} problem(s)"
        moved = sum(len(e.moved) for e in r.explorers)
        terminalreporter.write_line(
            f"{r.path:55s} {r.seconds:6.1f} s (run {r.run_seconds:5.1f} s)  "
            f"explorers {len(r.explorers)}, controls moved {moved}  {status}  -> {r.screenshot}"
        )
