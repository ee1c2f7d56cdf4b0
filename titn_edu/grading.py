"""Coursework an instructor can hand out and grade, with otter-grader.

The course notebooks are the instructor's solution notebooks, marked up in otter's format (a raw
``# ASSIGNMENT CONFIG`` cell; per exercise ``# BEGIN QUESTION`` with its points, the solution between
``# BEGIN SOLUTION`` / ``# END SOLUTION``, public and hidden test cells between ``# BEGIN TESTS`` /
``# END TESTS``). From them:

* :func:`release` runs ``otter assign`` on every marked-up notebook and writes, under one folder,
  ``student/`` (the notebooks to hand out: solutions replaced by ``...``, hidden tests removed,
  outputs cleared), ``autograder/`` (one otter autograder zip per notebook, hidden tests included),
  ``solutions/`` (the notebooks as otter runs them, with solutions) and ``course.json`` (notebooks,
  questions and points);
* :func:`grade` runs ``otter run`` (otter's grading without containers: ``otter grade`` needs Docker)
  on a folder of submissions, one per student, each in its own process with a time limit, and writes
  ``grades.csv`` (one row per student, notebook and question, with otter's message for a lost point)
  and one ``<notebook>.csv`` per notebook in the layout of otter's ``final_grades.csv``;
* :class:`CellTimeLimit` is an otter plugin (named in a notebook's assignment config) that stops any
  cell of a submission running longer than its limit, so one endless loop costs one question, not the
  grading run.

The command line is ``titn-edu course release`` / ``titn-edu course grade`` (see the README,
"Instructors"). otter-grader is a development dependency (``pip install -e ".[dev]"``); this module
imports it only when it is used.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .utils import atomic_write, usable_cores

__all__ = ["release", "grade", "course_notebooks", "questions", "threads_per_job", "CellTimeLimit", "limit_cell_time",
           "CELL_TIME_LIMIT_S", "SUBMISSION_TIME_LIMIT_S"]

#: Default wall-clock limit of one cell of a submission while it is graded (a plugin setting can change it).
CELL_TIME_LIMIT_S = 300
#: Default wall-clock limit of grading one submission (all its cells and tests).
SUBMISSION_TIME_LIMIT_S = 1800
_CONFIG_MARK = "# ASSIGNMENT CONFIG"
_QUESTION_MARK = "# BEGIN QUESTION"


def _otter() -> Any:
    """The ``otter`` package, or an ``ImportError`` saying how to install it."""
    try:
        import otter  # noqa: F401
        import otter.assign
        import otter.run
    except ImportError as err:
        raise ImportError("coursework needs otter-grader: pip install -e \".[dev]\" (or pip install "
                          "\"otter-grader>=7,<8\").") from err
    return otter


# ------------------------------------------------------------------------------ the notebooks
def course_notebooks(paths: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """The marked-up notebooks among ``paths`` (files or folders; default: the repository's ``notebooks/``).

    A notebook is marked up when it has a raw ``# ASSIGNMENT CONFIG`` cell; others are left out.
    """
    if paths is None:
        default = Path(__file__).resolve().parent.parent / "notebooks"
        if not default.is_dir():
            raise FileNotFoundError(f"no course notebooks at {default}: pass the notebooks (or their folder) explicitly.")
        paths = [default]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.glob("*.ipynb"))
        elif path.is_file() and path.suffix == ".ipynb":
            found.append(path)
        else:
            raise FileNotFoundError(f"{str(path)!r} is neither a notebook (.ipynb) nor a folder of notebooks.")
    return [p for p in found if _raw_cells(p, _CONFIG_MARK)]


def questions(notebook: str | os.PathLike) -> dict[str, float]:
    """``{question name: points}`` of a marked-up notebook, in notebook order."""
    import yaml

    out = {}
    for text in _raw_cells(Path(notebook), _QUESTION_MARK):
        config = yaml.safe_load(text.split("\n", 1)[1]) or {}
        if "name" not in config or not isinstance(config.get("points"), (int, float)):
            raise ValueError(f"{notebook}: every question needs a name and a number of points; got {config!r}.")
        out[str(config["name"])] = float(config["points"])
    return out


def _raw_cells(notebook: Path, mark: str) -> list[str]:
    """The sources of the raw cells of ``notebook`` that start with ``mark``."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    sources = ["".join(c.get("source", "")) for c in cells if c.get("cell_type") == "raw"]
    return [s for s in sources if s.lstrip().upper().startswith(mark)]


# ---------------------------------------------------------------------------------- release
def release(out: str | os.PathLike, *, notebooks: Iterable[str | os.PathLike] | None = None,
            run_tests: bool = True, force: bool = False) -> Path:
    """Write the student notebooks and the autograders of the course into the folder ``out``.

    ``run_tests``: let otter check that every solution passes its own tests (it runs each notebook);
    ``force``: replace an existing ``out``. The folder is built aside and moved into place at the end,
    so an interrupted release leaves ``out`` as it was. Returns ``out``.
    """
    _otter()
    out = Path(out).expanduser().resolve()
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists: choose a new folder, or pass force=True (--force) to replace it.")
    chosen = course_notebooks(notebooks)
    if not chosen:
        raise ValueError("none of these notebooks is marked up for otter (a raw '# ASSIGNMENT CONFIG' cell).")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        course = {nb.stem: _assign(nb, staging, run_tests) for nb in chosen}
        atomic_write(staging / "course.json", json.dumps({"notebooks": course}, indent=2) + "\n")
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _assign(notebook: Path, staging: Path, run_tests: bool) -> dict[str, Any]:
    """``otter assign`` one notebook; its student notebook, autograder zip and solutions into ``staging``."""
    import otter.assign

    work = staging / "otter" / notebook.stem
    otter.assign.main(str(notebook), str(work), no_pdfs=True, no_run_tests=not run_tests)
    zips = sorted((work / "autograder").glob("*.zip"))
    if len(zips) != 1:
        raise RuntimeError(f"otter assign made {len(zips)} autograder zips for {notebook.name}; expected one.")
    for kind in ("student", "autograder", "solutions"):
        (staging / kind).mkdir(exist_ok=True)
    for item in (work / "student").iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / "student" / item.name)
    shutil.copy2(zips[0], staging / "autograder" / f"{notebook.stem}.zip")
    shutil.copy2(work / "autograder" / notebook.name, staging / "solutions" / notebook.name)
    shutil.rmtree(work)
    return {"student": f"student/{notebook.name}", "autograder": f"autograder/{notebook.stem}.zip",
            "questions": questions(notebook)}


def _swap_in(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``; an existing ``out`` is moved aside first and removed only afterwards."""
    if (staging / "otter").exists():  # otter's working folders: their files were copied out
        shutil.rmtree(staging / "otter")
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ grading
@dataclass(frozen=True)
class _Result:
    """The grade of one submission of one notebook: per question ``(score, possible, message)``."""

    student: str
    notebook: str
    scores: dict[str, tuple[float, float, str]]


def grade(submissions: str | os.PathLike, *, release_dir: str | os.PathLike, out: str | os.PathLike,
          jobs: int = 1, timeout_s: float = SUBMISSION_TIME_LIMIT_S) -> Path:
    """Grade a folder of submissions with the release's autograders; returns the path of ``grades.csv``.

    ``submissions`` holds one folder per student, named after the student, with the notebooks they
    hand in under their released names (``<student>/02_attention.ipynb``). Each submission is graded by
    ``otter run`` in its own process (and its own ``TITN_EDU_OUTPUTS`` folder), at most ``timeout_s``
    seconds; ``jobs`` submissions at a time, each with an equal share of the cores (its kernel's
    ``OMP_NUM_THREADS``), so that a question timed by :func:`titn_edu.checks.within_budget` gets the
    same machine however many gradings run beside it. A notebook that is missing, cannot be read, or
    whose grading fails or runs out of time scores zero on every question, with the reason in the CSV.
    """
    _otter()
    course = _read_course(Path(release_dir))
    folder = Path(submissions)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: expected one folder per student inside it.")
    students = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"{folder} has no student folders (expected {folder}/<student>/<notebook>.ipynb).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(s, nb) for s in students for nb in course]
    threads = threads_per_job(jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda t: _grade_one(t[0], t[1], course[t[1]], Path(release_dir), out, timeout_s,
                                                     threads), tasks))
    return _write_grades(results, course, out)


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` gradings at once: the cores this process may use, shared equally.

    Without the split every kernel would start one PyTorch thread per core, and ``jobs`` kernels would
    fight over the same cores: a training exercise that takes 60 s alone then runs past its budget.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}.")
    return max(1, usable_cores() // jobs)


def _read_course(release_dir: Path) -> dict[str, dict[str, Any]]:
    path = release_dir / "course.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: point release_dir (--release) at a folder written by "
                                "`titn-edu course release`.")
    return json.loads(path.read_text(encoding="utf-8"))["notebooks"]


def _grade_one(student: Path, notebook: str, info: dict[str, Any], release_dir: Path, out: Path,
               timeout_s: float, threads: int) -> _Result:
    """``otter run`` on ``student/<notebook>.ipynb`` in a fresh folder and process; zeros with a reason on failure."""
    submission = student / f"{notebook}.ipynb"
    zeros = {q: (0.0, p, "") for q, p in info["questions"].items()}
    if not submission.is_file():
        return _Result(student.name, notebook, {q: (0.0, p, "no submission") for q, (_, p, _) in zeros.items()})
    log = out / "logs" / student.name / f"{notebook}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="titn_edu_grade_") as work:
        shutil.copy2(submission, Path(work) / submission.name)
        env = {**os.environ, "TITN_EDU_OUTPUTS": str(Path(work) / "outputs"),
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "otter", "run", "--no-logo", "-a", str((release_dir / info["autograder"]).resolve()),
                   "-o", work, submission.name]
        reason = _run(command, work, env, log, timeout_s)
        results = Path(work) / "results.json"
        if reason is None and not results.is_file():
            reason = "otter wrote no results (see the log)"
        if reason is not None:
            return _Result(student.name, notebook, {q: (0.0, p, reason) for q, (_, p, _) in zeros.items()})
        return _Result(student.name, notebook, _scores(json.loads(results.read_text(encoding="utf-8")), zeros))


def _run(command: list[str], cwd: str, env: dict[str, str], log: Path, timeout_s: float) -> str | None:
    """Run ``command`` (its output into ``log``); ``None`` when it succeeded, else why not."""
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the kernel it started goes too
            proc.wait()
            return f"grading stopped after {timeout_s:g} s"
    return None if code == 0 else f"otter run failed with exit code {code} (see the log)"


def _scores(results: dict[str, Any], zeros: dict[str, tuple[float, float, str]]) -> dict[str, tuple[float, float, str]]:
    """Per question ``(score, possible, message)`` from otter's ``results.json``; questions it lacks score zero."""
    found = {t["name"]: t for t in results.get("tests", []) if "max_score" in t}
    scores = {}
    for question, (_, possible, _) in zeros.items():
        test = found.get(question)
        if test is None:
            scores[question] = (0.0, possible, "not graded (see the log)")
            continue
        score = float(test.get("score") or 0.0)
        message = "" if score >= float(test["max_score"]) else str(test.get("output", "")).strip()
        scores[question] = (score, float(test["max_score"]), message)
    return scores


def _write_grades(results: Sequence[_Result], course: dict[str, dict[str, Any]], out: Path) -> Path:
    """``grades.csv`` (long: student, notebook, question, score, possible, message) and ``<notebook>.csv`` (wide)."""
    rows = [[r.student, r.notebook, q, f"{s:g}", f"{p:g}", m] for r in results for q, (s, p, m) in r.scores.items()]
    atomic_write(out / "grades.csv", _csv(["student", "notebook", "question", "score", "possible", "message"], rows))
    for notebook, info in course.items():
        names = list(info["questions"])
        wide = []
        for r in (r for r in results if r.notebook == notebook):
            total, possible = sum(s for s, _, _ in r.scores.values()), sum(p for _, p, _ in r.scores.values())
            wide.append([r.student] + [f"{r.scores[q][0]:g}" for q in names]
                        + [f"{total:g}", f"{possible:g}", f"{total / possible if possible else 0:.4f}"])
        points = [f"{info['questions'][q]:g}" for q in names]
        wide.insert(0, ["points-per-question"] + points + ["", f"{sum(info['questions'].values()):g}", ""])
        atomic_write(out / f"{notebook}.csv", _csv(["file"] + names + ["total_points_earned", "possible", "percent_correct"], wide))
    return out / "grades.csv"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------- a time limit on every cell
def limit_cell_time(seconds: float) -> None:
    """In an IPython kernel: stop every following cell that runs longer than ``seconds`` (``TimeoutError``).

    Uses ``SIGALRM`` around each cell (IPython's ``pre_run_cell`` / ``post_run_cell`` events); a
    checker's own, shorter time limit nests inside it. Does nothing where there is no IPython or no
    ``SIGALRM``.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return

    def on_alarm(signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # and again, should the cell swallow it
        raise TimeoutError(f"this cell ran longer than the grading limit of {seconds:g} s and was stopped.")

    def start(*args: Any) -> None:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def stop(*args: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    shell.events.register("pre_run_cell", start)
    shell.events.register("post_run_cell", stop)


def _cell_time_limit_plugin() -> type:
    """The otter plugin class (built on first access: importing otter takes seconds)."""
    from otter.plugins import AbstractOtterPlugin

    class CellTimeLimit(AbstractOtterPlugin):
        """otter plugin: before a submission runs, add a first cell that limits every cell's time.

        Name it in a notebook's ``# ASSIGNMENT CONFIG``::

            plugins:
              - titn_edu.grading.CellTimeLimit:
                  seconds: 300

        (``seconds`` defaults to :data:`CELL_TIME_LIMIT_S`). A cell that runs longer fails with
        ``TimeoutError``; grading goes on with the next cell, so only the questions that needed it are lost.
        """

        def before_execution(self, submission: Any) -> Any:
            import nbformat

            seconds = float((self.plugin_config or {}).get("seconds", CELL_TIME_LIMIT_S))
            if isinstance(submission, str):  # a script, not a notebook: nothing to add
                return submission
            code = f"from titn_edu.grading import limit_cell_time\nlimit_cell_time({seconds!r})"
            submission.cells.insert(0, nbformat.v4.new_code_cell(code))
            return submission

    CellTimeLimit.__module__, CellTimeLimit.__qualname__ = __name__, "CellTimeLimit"
    return CellTimeLimit


def __getattr__(name: str) -> Any:
    """``CellTimeLimit`` is made on first access (PEP 562), so that importing this module does not import otter."""
    if name == "CellTimeLimit":
        globals()[name] = _cell_time_limit_plugin()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
