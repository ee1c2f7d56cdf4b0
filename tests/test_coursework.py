"""Coursework end to end: ``otter assign`` on the course notebooks, then ``otter run`` on submissions.

* the student notebooks hold none of the solution lines and none of the hidden tests;
* graded by the autograder, a solution notebook gets full marks on every question, an untouched student
  notebook zero on every question (all of them need code), a submission that delegates to the library
  zero on those questions (the message says so), and a wrong-but-plausible one (softmax over the wrong
  axis) loses exactly the points of that question;
* a small assignment built here the way a new notebook is marked up shows the rest: a question graded
  on a measured outcome (a model trained within a CPU budget), a cell that never ends, and a kernel that
  dies cost only their own questions, never the grading run.

Grading runs whole notebooks, so CI grades a representative subset: notebook 02 (attention, the
examples of the checklist) and the small assignment, about a minute; every notebook is released and
checked for leaked solutions. ``TITN_EDU_GRADE_ALL=1`` also grades the solution and the untouched student
version of every notebook 00-10 (7 minutes on two cores, 2 jobs, each with one thread: the solutions get 93 of
93 points, the untouched notebooks 0).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("otter")

from titn_edu import grading  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
COURSE = grading.course_notebooks([NOTEBOOKS])
DELEGATED = "the library's own version of what this exercise asks you to write"
JOBS = max(2, min(4, os.cpu_count() or 1))  # submissions graded at once


# --------------------------------------------------------------------------------- helpers
def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _answers(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells a student writes in (otter tags them), in notebook order."""
    tags = ("otter_answer_cell", "otter_assign_solution_cell")
    return [c for c in nb.cells if c.cell_type == "code" and set(c.metadata.get("tags", [])) & set(tags)]


def _submission(student_nb: Path, answers: list[str], to: Path) -> None:
    """The student notebook with its answer cells filled in with ``answers`` (in order)."""
    nb = _read(student_nb)
    cells = _answers(nb)
    assert len(cells) == len(answers)
    for cell, source in zip(cells, answers):
        cell.source = source
    to.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(to))


def _grades(path: Path, notebook: str) -> dict[tuple[str, str], tuple[float, float, str]]:
    """``{(student, question): (score, possible, message)}`` of one notebook, from grades.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["student"], r["question"]): (float(r["score"]), float(r["possible"]), r["message"])
                for r in csv.DictReader(f) if r["notebook"] == notebook}


def _solution_lines(nb: nbformat.NotebookNode) -> set[str]:
    """Lines a solution holds and the rest of the notebook does not (so they must not reach students)."""
    inside, lines, elsewhere = False, set(), set()
    in_block = False
    for cell in nb.cells:
        if cell.cell_type == "raw":
            in_block = {"# BEGIN SOLUTION": True, "# END SOLUTION": False}.get(cell.source.strip(), in_block)
            continue
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            text = line.strip()
            if text in ("# BEGIN SOLUTION", "# END SOLUTION"):
                inside = text == "# BEGIN SOLUTION"
            elif in_block and (inside or text.endswith("# SOLUTION")):
                lines.add(re.sub(r"\s*# SOLUTION$", "", text))
            else:
                elsewhere.add(text)
    return {line for line in lines - elsewhere if len(line) > 3}


# ------------------------------------------------------------------------------ the release
@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "handout"
    return grading.release(out, notebooks=COURSE, run_tests=False)


def test_every_course_notebook_is_marked_up():
    assert [p.name for p in COURSE] == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert len(COURSE) == 11


def test_release_writes_every_notebook_and_refuses_to_overwrite(released):
    course = json.loads((released / "course.json").read_text())["notebooks"]
    assert sorted(course) == [p.stem for p in COURSE]
    for name, info in course.items():
        assert (released / info["student"]).is_file() and (released / info["autograder"]).is_file()
        assert info["questions"] and all(points > 0 for points in info["questions"].values())
        assert info["questions"] == grading.questions(NOTEBOOKS / f"{name}.ipynb")
    with pytest.raises(FileExistsError, match="--force"):
        grading.release(released, notebooks=COURSE[:1], run_tests=False)


@pytest.mark.parametrize("source", COURSE, ids=[p.stem for p in COURSE])
def test_student_notebooks_hold_no_solution_and_no_hidden_test(released, source):
    original = _read(source)
    solution = _solution_lines(original)
    assert solution, "no solution lines found: the markup changed?"
    student = _read(released / "student" / source.name)
    text = json.dumps(student)  # code, markdown, metadata (where otter keeps the public tests)
    student_lines = {line.strip() for cell in student.cells for line in cell.source.splitlines()}
    leaked = sorted(line for line in solution if line in student_lines)
    assert not leaked, f"solution lines in the student notebook: {leaked}"
    hidden = re.findall(r"def (test_\w+_hidden_\d+)", json.dumps(original))
    public = re.findall(r"def (test_\w+_public_\d+)", json.dumps(original))
    assert hidden and not [h for h in hidden if h in text], "a hidden test reached the student notebook"
    assert all(p in text for p in public), "the public tests should travel with the student notebook"
    assert all(not cell.get("outputs") for cell in student.cells if cell.cell_type == "code")
    assert all(cell.source.strip() != "# BEGIN SOLUTION" for cell in student.cells)


# ------------------------------------------------------------------ grading notebook 02
ATTENTION = "02_attention"
CHEAT = {  # the library, renamed, wrapped, inherited, or built to be counted
    "ex1": """
from titn_edu.attention import scaled_dot_product_attention as sdpa

def my_attention(q, k, v, *, mask=None):
    return sdpa(q, k, v, mask=mask)
""",
    "ex2": """
class MyMultiHeadAttentionNoEinops(titn_edu.MultiHeadAttention):
    pass
""",
    "ex3": """
def mha_parameters(dim, qkv_bias=False):
    return titn_edu.count_parameters(MultiHeadAttention(dim, 1, qkv_bias=qkv_bias))
""",
}


@pytest.fixture(scope="module")
def graded_attention(released, tmp_path_factory) -> tuple[dict, dict[str, float]]:
    """Notebook 02 graded for four students: the solution, untouched, a cheat and a plausible mistake."""
    root = tmp_path_factory.mktemp("submissions")
    student, solutions = released / "student" / f"{ATTENTION}.ipynb", released / "solutions" / f"{ATTENTION}.ipynb"
    answers = [c.source for c in _answers(_read(solutions))]
    names = list(grading.questions(NOTEBOOKS / f"{ATTENTION}.ipynb"))
    (root / "solution").mkdir()
    nbformat.write(_read(solutions), str(root / "solution" / f"{ATTENTION}.ipynb"))
    (root / "untouched").mkdir()
    nbformat.write(_read(student), str(root / "untouched" / f"{ATTENTION}.ipynb"))
    cheat = [CHEAT.get(q, a) for q, a in zip(names, answers)]
    _submission(student, cheat, root / "cheat" / f"{ATTENTION}.ipynb")
    assert "softmax(dim=-1)" in answers[0]
    wrong = [answers[0].replace("softmax(dim=-1)", "softmax(dim=-2)")] + answers[1:]
    _submission(student, wrong, root / "wrong_axis" / f"{ATTENTION}.ipynb")
    # the other notebooks of the release are not handed in: they score "no submission" at no cost
    csv_path = grading.grade(root, release_dir=released, out=tmp_path_factory.mktemp("grades"), jobs=JOBS)
    return _grades(csv_path, ATTENTION), grading.questions(NOTEBOOKS / f"{ATTENTION}.ipynb")


def test_the_solution_gets_full_marks(graded_attention):
    grades, points = graded_attention
    for q, p in points.items():
        assert grades[("solution", q)][:2] == (p, p), (q, grades[("solution", q)])


def test_an_untouched_student_notebook_gets_zero_everywhere(graded_attention):
    grades, points = graded_attention
    for q, p in points.items():
        assert grades[("untouched", q)][:2] == (0.0, p), (q, grades[("untouched", q)])


def test_a_submission_that_delegates_to_the_library_scores_zero_there(graded_attention):
    grades, points = graded_attention
    for q, p in points.items():
        score, possible, message = grades[("cheat", q)]
        if q in CHEAT:
            assert score == 0 and DELEGATED in message, (q, message)
        else:
            assert score == possible == p, (q, message)


def test_a_wrong_but_plausible_submission_loses_exactly_those_points(graded_attention):
    grades, points = graded_attention
    lost = {q: points[q] - grades[("wrong_axis", q)][0] for q in points}
    assert lost == {q: (points[q] if q == "ex1" else 0.0) for q in points}
    assert "columns of your weights sum to 1" in grades[("wrong_axis", "ex1")][2]


# ----------------------------------------------- a small assignment, marked up like a notebook
def _toy_notebook(path: Path) -> None:
    """Two questions: a function, and a model trained within a CPU budget, graded on its accuracy."""
    v4 = nbformat.v4
    test = '""" # BEGIN TEST CONFIG\npoints: {p}\n{h}""" # END TEST CONFIG\n{body}'
    cells = [
        v4.new_code_cell("import torch\n\ng = torch.Generator().manual_seed(0)\n"
                         "def blobs(n, g):\n    y = torch.randint(2, (n,), generator=g)\n"
                         "    return torch.randn(n, 2, generator=g) + 3 * y[:, None].float(), y\n"
                         "x_train, y_train = blobs(200, g)"),
        v4.new_raw_cell("# ASSIGNMENT CONFIG\nname: toy\nexport_cell: false\ncheck_all_cell: false\n"
                        "tests:\n  files: false\n  ok_format: false\nplugins:\n"
                        "  - titn_edu.grading.CellTimeLimit:\n      seconds: 10"),
        v4.new_raw_cell("# BEGIN QUESTION\nname: ex1\npoints: 2"),
        v4.new_markdown_cell("**Exercise 1.** Write `double(x)`."),
        v4.new_raw_cell("# BEGIN SOLUTION"),
        v4.new_code_cell("def double(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION"),
        v4.new_raw_cell("# END SOLUTION"), v4.new_raw_cell("# BEGIN TESTS"),
        v4.new_code_cell(test.format(p=1, h="", body="def test_ex1_public_1(double):\n    assert double(2) == 4\n\n"
                                                      "test_ex1_public_1(double)")),
        v4.new_code_cell(test.format(p=1, h="hidden: true\n", body="def test_ex1_hidden_2(double):\n    assert double(-3) == -6\n\n"
                                                                     "test_ex1_hidden_2(double)")),
        v4.new_raw_cell("# END TESTS"), v4.new_raw_cell("# END QUESTION"),
        v4.new_raw_cell("# BEGIN QUESTION\nname: ex2\npoints: 2"),
        v4.new_markdown_cell("**Exercise 2.** Write `train(x, y)`: fit a linear classifier in at most 6 s on a CPU; "
                             "graded on its accuracy on new data."),
        v4.new_raw_cell("# BEGIN SOLUTION"),
        v4.new_code_cell("def train(x, y):\n    # BEGIN SOLUTION\n    model = torch.nn.Linear(2, 2)\n"
                         "    for _ in range(50):\n        model.zero_grad()\n"
                         "        torch.nn.functional.cross_entropy(model(x), y).backward()\n"
                         "        with torch.no_grad():\n            for p in model.parameters():\n"
                         "                p -= 0.5 * p.grad\n    return model\n    # END SOLUTION"),
        v4.new_raw_cell("# END SOLUTION"), v4.new_raw_cell("# BEGIN TESTS"),
        v4.new_code_cell(test.format(p=2, h="hidden: true\n", body=(
            "def test_ex2_hidden_1(train, blobs):\n    import torch\n    from titn_edu import checks\n"
            "    g = torch.Generator().manual_seed(7)\n    x, y = blobs(300, g)\n"
            "    model, seconds = checks.within_budget(train, x[:200], y[:200], seconds=6)\n"
            "    with torch.no_grad():\n        accuracy = (model(x[200:]).argmax(-1) == y[200:]).float().mean().item()\n"
            "    assert accuracy >= 0.9, f'accuracy on new data {accuracy:.2f} < 0.90 (trained in {seconds:.1f} s)'\n\n"
            "test_ex2_hidden_1(train, blobs)"))),
        v4.new_raw_cell("# END TESTS"), v4.new_raw_cell("# END QUESTION"),
    ]
    nb = v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
    nbformat.write(nb, str(path))


TOY_SUBMISSIONS = {  # student: (answer of ex1, answer of ex2), None: the solution's
    "slow_training": (None, "def train(x, y):\n    while True:\n        pass"),
    "endless_cell": ("while True:\n    pass", None),
    "dead_kernel": ("import os\nos._exit(1)", None),
}


@pytest.fixture(scope="module")
def graded_toy(tmp_path_factory) -> tuple[dict, Path]:
    source = tmp_path_factory.mktemp("toy_source") / "toy.ipynb"
    _toy_notebook(source)
    course = grading.release(tmp_path_factory.mktemp("toy_release") / "handout", notebooks=[source], run_tests=False)
    solution = [c.source for c in _answers(_read(course / "solutions" / "toy.ipynb"))]
    root = tmp_path_factory.mktemp("toy_submissions")
    for student, answers in TOY_SUBMISSIONS.items():
        filled = [a if a is not None else s for a, s in zip(answers, solution)]
        _submission(course / "student" / "toy.ipynb", filled, root / student / "toy.ipynb")
    (root / "absent").mkdir()
    out = tmp_path_factory.mktemp("toy_grades")
    return _grades(grading.grade(root, release_dir=course, out=out, jobs=JOBS, timeout_s=300), "toy"), out


def test_a_question_graded_on_a_measured_outcome_within_a_budget(graded_toy):
    grades, _ = graded_toy
    assert grades[("endless_cell", "ex2")][:2] == (2.0, 2.0)  # the solution's training, graded on new data
    score, _, message = grades[("slow_training", "ex2")]
    assert score == 0 and "did not finish within 6 s" in message
    assert grades[("slow_training", "ex1")][:2] == (2.0, 2.0)


def test_an_endless_cell_costs_only_its_question(graded_toy):
    grades, _ = graded_toy
    assert grades[("endless_cell", "ex1")][0] == 0
    assert grades[("endless_cell", "ex2")][:2] == (2.0, 2.0)


def test_a_dead_kernel_or_a_missing_notebook_scores_zero_with_a_reason(graded_toy):
    grades, out = graded_toy
    for q in ("ex1", "ex2"):
        assert grades[("dead_kernel", q)][0] == 0 and grades[("dead_kernel", q)][2]
        assert grades[("absent", q)] == (0.0, 2.0, "no submission")
    assert (out / "logs" / "dead_kernel" / "toy.log").is_file()


def test_the_per_notebook_csv_has_otters_layout(graded_toy):
    _, out = graded_toy
    with open(out / "toy.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "ex1", "ex2", "total_points_earned", "possible", "percent_correct"]
    assert rows[1][:3] == ["points-per-question", "2", "2"]
    slow = next(r for r in rows if r[0] == "slow_training")
    assert slow[1:5] == ["2", "0", "2", "4"]


def test_a_submission_past_its_time_is_stopped(tmp_path):
    log = tmp_path / "log.txt"
    reason = grading._run([sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path), dict(os.environ), log, 1.0)
    assert reason == "grading stopped after 1 s"


def test_each_grading_job_gets_its_share_of_the_cores(released, tmp_path, monkeypatch):
    """Parallel gradings split the cores, so a question timed by ``within_budget`` gets the same machine."""
    seen = []
    monkeypatch.setattr(grading, "_run", lambda command, cwd, env, log, timeout_s: seen.append(env) or "not run")
    for student in ("ann", "bob"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(_read(released / "student" / COURSE[0].name), str(tmp_path / "subs" / student / COURSE[0].name))
    grading.grade(tmp_path / "subs", release_dir=released, out=tmp_path / "grades", jobs=2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert len(seen) == 2  # one notebook handed in by each; the others score zero without a run
    assert {(e["OMP_NUM_THREADS"], e["MKL_NUM_THREADS"]) for e in seen} == {(str(max(1, cores // 2)),) * 2}
    assert grading.threads_per_job(1) == cores and grading.threads_per_job(10 * cores) == 1
    with pytest.raises(ValueError, match="jobs must be a whole number"):
        grading.threads_per_job(0)


def test_the_command_line(tmp_path, capsys):
    from titn_edu.cli import main

    assert main(["course", "grade", str(tmp_path), "--release", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g")]) == 1
    assert "course release" in capsys.readouterr().err
    assert main(["course", "release", "--out", str(tmp_path / "r"), "--notebooks", str(tmp_path)]) == 1
    assert "none of these notebooks is marked up" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("an instructor's file")
    assert main(["course", "release", "--out", str(tmp_path / "r"), "--notebooks", str(COURSE[0])]) == 1
    assert "--force" in capsys.readouterr().err and (tmp_path / "r" / "keep.txt").read_text() == "an instructor's file"


# ------------------------------------------------------ every notebook (opt-in: several minutes)
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TITN_EDU_GRADE_ALL") != "1", reason="set TITN_EDU_GRADE_ALL=1 to grade every notebook")
def test_every_notebook_full_marks_for_the_solution_and_zero_untouched(released, tmp_path):
    for notebook in COURSE:
        for student, folder in (("solution", "solutions"), ("untouched", "student")):
            (tmp_path / "subs" / student).mkdir(parents=True, exist_ok=True)
            nbformat.write(_read(released / folder / notebook.name), str(tmp_path / "subs" / student / notebook.name))
    path = grading.grade(tmp_path / "subs", release_dir=released, out=tmp_path / "grades", jobs=JOBS)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * sum(len(grading.questions(nb)) for nb in COURSE)
    for r in rows:
        want = float(r["possible"]) if r["student"] == "solution" else 0.0
        assert float(r["score"]) == want, r
