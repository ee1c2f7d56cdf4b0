"""The browser harness itself: it must pass a working explorer and catch every kind of failure.

Uses the small notebooks in fixtures/ (never collected by nbval). If these tests pass, a clean
report for a course notebook means something.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from labdriver import file_digest

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_working_explorers_pass_and_react(lab):
    report = lab.run_notebook(FIXTURES / "explorer.ipynb", screenshot_name="fixture-explorer")
    assert report.problems == [], report.describe()
    code = [c for c in report.cells if c["type"] == "code"]
    assert [c["count"] for c in code] == [1, 2, 3, 4, 5]
    # an error in a cell tagged raises-exception is accepted, and Run All goes on past it
    [on_purpose] = code[1]["errors"]
    assert on_purpose["ename"] == "ValueError" and on_purpose["visible"]
    # stderr text and a warning are shown with the stderr renderer, and are not errors
    assert report.stderr_outputs == 1
    assert [o["mime"] for o in code[2]["outputs"]][0] == "application/vnd.jupyter.stderr"
    # the progress bar and both explorers are rendered widgets
    assert [sum(o["widgetRendered"] for o in c["outputs"]) for c in code] == [0, 0, 1, 1, 1]
    # an ipywidgets.interactive is found by itself; the hand-built one by its `explorer` tag
    interactive, tagged = report.explorers
    assert (interactive.cell, tagged.cell) == (4, 5)
    assert interactive.moved == ["slider 'frequency': 1 -> 2", "dropdown 'kind': sine -> cosine"]
    assert tagged.moved == [
        "slider 'alpha': 1.00 -> 0.80",  # at its maximum, so the harness moves it down
        "toggle buttons 'colour': red -> green",
        "radio buttons 'size': small -> large",
        "checkbox 'grid': false -> true",
    ]
    assert report.screenshot is not None and report.screenshot.stat().st_size > 10_000


def test_error_output_is_reported(lab):
    report = lab.run_notebook(FIXTURES / "failing.ipynb", screenshot_name="fixture-failing")
    [failing] = [c for c in report.cells if c["errors"]]
    assert failing["index"] == 2
    [err] = failing["errors"]
    # JupyterLab shows the traceback with the stderr renderer; the model says it is an error
    assert err["mime"] == "application/vnd.jupyter.stderr"
    assert err["visible"]
    assert "Traceback" in err["text"] and "deliberate failure for the harness self-test" in err["text"]
    assert err["ename"] == "ValueError"
    assert any("cell 2 shows an error" in p and "ValueError" in p for p in report.problems), report.problems
    # Run All stops at the error, and the harness says which cell was never run
    assert any(p.startswith("cell 3 was not run") for p in report.problems), report.problems
    assert len(report.problems) == 2, report.problems


def test_broken_explorers_and_widgets_are_reported(lab):
    report = lab.run_notebook(FIXTURES / "broken_explorers.ipynb", screenshot_name="fixture-broken-explorers")
    expected = [
        "cell 2: moving the slider 'step' to '1' shows an error: RuntimeError: explorer broke at step=1",
        "cell 3: moving the slider 'level' from '0' to '1' did not change the output",
        "cell 4: moving the slider 'hidden' to '1' raises an error that only the Log Console shows: KeyError",
        "cell 5 is an explorer but shows no control",
        "the kernel raised ZeroDivisionError: division by zero (2x, while handling a comm_msg) and no output shows it",
        "cell 8 has a widget that did not render; the page shows 'Error displaying widget: model not found'",
    ]
    for text in expected:
        assert sum(p.startswith(text) for p in report.problems) == 1, (text, report.problems)
    assert len(report.problems) == len(expected), report.problems


def test_server_refuses_to_save(lab):
    """Whatever the page does, the test server cannot overwrite a notebook."""
    target = FIXTURES / "failing.ipynb"
    before = file_digest(target)
    body = json.dumps({"type": "notebook", "format": "json", "content": json.loads(target.read_text())})
    rel = target.relative_to(lab.server.root).as_posix()
    request = urllib.request.Request(
        lab.server.url(f"api/contents/{rel}"), data=body.encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    # 403 from the plain contents manager; jupytext's (installed with otter-grader) reports the same
    # refusal as a 500 whose message is ours.
    assert info.value.code in (403, 500)
    assert "this test server never writes files" in info.value.read().decode()
    assert file_digest(target) == before


def test_a_run_past_its_time_limit_is_stopped_and_reported(lab, monkeypatch):
    monkeypatch.setattr(lab, "run_timeout", 5.0)
    report = lab.run_notebook(FIXTURES / "slow.ipynb", screenshot_name="fixture-slow")
    assert report.run_seconds < 60
    assert report.problems[0].startswith("could not run all cells within 5 s"), report.problems
    # the interrupt ends the cell with a KeyboardInterrupt, and Run All stops there
    assert any(p.startswith("cell 2 shows an error in its output: KeyboardInterrupt") for p in report.problems)
    assert any(p.startswith("cell 3 was not run") for p in report.problems)
    assert len(report.problems) == 3, report.problems


def test_a_closed_notebook_leaves_no_kernel_running(lab):
    lab.run_notebook(FIXTURES / "failing.ipynb", screenshot_name="fixture-failing")
    deadline = time.monotonic() + 30
    while (kernels := json.load(urllib.request.urlopen(lab.server.url("api/kernels"), timeout=10))) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert kernels == []
