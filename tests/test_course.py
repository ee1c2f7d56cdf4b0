"""The notebooks' training helpers, on both paths: the CPU budget and (tiny) the paper presets a GPU runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import titn_edu
from titn_edu import course
from titn_edu.checkpoint import load_checkpoint

pytest.importorskip("titn_edu.cli")


def test_get_preset_copies_and_rejects_unknown():
    p = course.get_preset("mnist-quick")
    p["epochs"] = 999
    assert course.get_preset("mnist-quick")["epochs"] != 999
    with pytest.raises(ValueError, match="unknown preset"):
        course.get_preset("mnist-slow")
    with pytest.raises(TypeError, match="dict"):
        course.load_data("mnist-quick")
    with pytest.raises(ValueError, match="lacks"):
        course.train_student({"dataset": "mnist"}, None, teacher=None)


@pytest.mark.parametrize("name", ["paper-mnist", "paper-cifar10"])
def test_paper_presets_run_the_same_functions_at_a_tiny_budget(name, tmp_path):
    """What a GPU notebook runs with PAPER_SCALE = True, on 20 images and one epoch, on the CPU."""
    torch.set_num_threads(1)
    preset = course.get_preset(name)
    train, test = course.load_data(preset, limit=20, test_limit=10)
    assert len(train) == 20 and len(test) == 10
    teacher, t_hist = course.train_teacher(preset, train, epochs=1, batch_size=10, device="cpu", progress=False)
    assert t_hist.status == "completed" and type(teacher).__name__ == "VGGTeacher"
    student, s_hist = course.train_student(preset, train, test, teacher=teacher, epochs=1, batch_size=10,
                                           device="cpu", progress=False)
    assert s_hist.status == "completed"
    assert student.config["depth"] == 12 and student.distill and not student.training
    assert s_hist[-1]["teacher_agreement"] is not None and "val_top1" in s_hist[-1]


def test_quick_preset_learns_and_teacher_cache(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("TITN_EDU_OUTPUTS", str(tmp_path))
    preset = course.get_preset("mnist-quick")
    train, test = course.load_data(preset, limit=1200, test_limit=200)
    teacher, hist, cached = course.cached_teacher(preset, train, epochs=1, progress=False, device="cpu")
    assert not cached and (tmp_path / "teacher-mnist-quick.pt").is_file()
    again, hist2, cached = course.cached_teacher(preset, train, epochs=1, progress=False, device="cpu")
    assert cached and hist2 == [dict(r) for r in hist]
    for a, b in zip(teacher.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    # different settings: retrained, file replaced
    _, _, cached = course.cached_teacher(preset, train, epochs=2, progress=False, device="cpu")
    assert not cached
    assert load_checkpoint(tmp_path / "teacher-mnist-quick.pt")["extra"]["course_key"]["epochs"] == 2
    student, history, cached = course.cached_student(preset, train, test, teacher=teacher, epochs=2,
                                                     progress=False, device="cpu")
    assert not cached and history[-1]["val_top1"] > 25.0  # well above chance (10 %) after 2 short epochs
    again, _, cached = course.cached_student(preset, train, test, teacher=teacher, epochs=2, progress=False)
    assert cached and torch.equal(again.pos_embed, student.pos_embed)
    _, _, cached = course.cached_student(preset, train, test, teacher=teacher, epochs=1, retrain=True,
                                         progress=False)
    assert not cached
    vit, h = course.train_student(preset, train, None, teacher=None, model="vit-tiny", epochs=1, progress=False,
                                  device="cpu")
    assert not vit.distill and h[-1]["teacher_agreement"] is None


def test_outputs_dir_finds_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("TITN_EDU_OUTPUTS", raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "titn_edu").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert course.outputs_dir() == (tmp_path / "outputs").resolve()


def test_shipped_models_and_a_short_continuation():
    """The notebooks' way to the shipped models, and a real (tiny) continuation of the shipped student."""
    torch.set_num_threads(1)
    teacher = course.shipped_teacher("mnist")
    student = course.shipped_student("mnist")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert student.pretrained_info["name"] == "titn-mnist" and not student.training
    preset = course.get_preset("titn-mnist")
    train, test = course.load_data(preset, limit=64, test_limit=64)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    history = course.continue_training(preset, student, train, test, teacher=teacher, epochs=1, batch_size=32,
                                       device="cpu", progress=False)
    assert history.status == "completed" and not student.training
    assert history[0]["lr"] <= 0.1 * preset["lr"] + 1e-12  # a tenth of the preset's rate at most
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "continue_training did not change the weights"
    assert history[0]["val_top1"] > 80  # still a trained model, not thrown away
    with pytest.raises(ValueError, match="lr_scale"):
        course.continue_training(preset, student, train, teacher=None, lr_scale=2.0)
    with pytest.raises(ValueError, match="unknown pretrained model 'teacher-svhn'"):
        course.shipped_teacher("svhn")
    with pytest.raises(ValueError, match=r"'titn-mnist' is a mnist student, not a mnist teacher.*'teacher-mnist'"):
        course.shipped_teacher("mnist", name="titn-mnist")
    with pytest.raises(ValueError, match="not a mnist teacher"):
        course.shipped_teacher("mnist", name="teacher-cifar10")


def test_the_recorded_experiments_teacher_is_shipped_as_teacher_cifar10_quick(load_script):
    """The course's recorded runs (notebooks 08 and 10) were distilled from the 80 % ResNet-9 shipped as
    ``teacher-cifar10`` at the time; it stays shipped as ``teacher-cifar10-quick``, and ``course_runs.py``
    names it so. Each record's teacher (parameters, test scores) must be that model."""
    grid = load_script("course_runs")
    assert grid.TEACHER == "pretrained:teacher-cifar10-quick"
    quick = titn_edu.pretrained_info("teacher-cifar10-quick")
    teacher = course.shipped_teacher("cifar10", name="teacher-cifar10-quick")
    assert teacher.pretrained_info["params"] == quick["params"] and not teacher.training
    records = [json.loads(p.read_text()) for p in sorted(course.recorded("results", "course").glob("*.json"))]
    taught = [r for r in records if str((r.get("teacher") or {}).get("name", "")).startswith("pretrained:")]
    assert len(taught) >= 18, len(taught)
    for r in taught:
        assert r["teacher"]["params"] == quick["params"], r["command"]
        assert r["teacher"]["test_top1"] == quick["metrics"]["test_top1"], (r["command"], r["teacher"]["test_top1"])


def test_the_recorded_course_grid_parses_and_changes_one_thing_per_variant(load_script):
    """scripts/course_runs.py: every variant is a valid titn-edu train command, one change away from TITN."""
    from titn_edu.cli import _settings, build_parser

    grid = load_script("course_runs")
    parser = build_parser()
    settings = {name: _settings(parser.parse_args(["train", *grid.BASE, *flags, "--output", "x"]), parser, None)
                for name, (_, flags) in grid.VARIANTS.items()}
    keys = ("model", "teacher", "mixing", "distillation", "tau")
    titn = {k: settings["titn"][k] for k in keys}
    for name, s in settings.items():
        assert s["limit"] == 10_000 and s["epochs"] == 12 and s["model_args"] == {}, name
        changed = {k for k in keys if s[k] != titn[k]} - {"tau"}
        assert name == "titn" or 1 <= len(changed) <= 2, (name, changed)   # ViT/TNT: model and teacher go together


def test_recorded_finds_the_repositorys_runs_and_says_where_to_run_otherwise(tmp_path, monkeypatch):
    root = Path(__file__).parents[1]
    monkeypatch.chdir(root / "notebooks")
    assert course.recorded("benchmarks", "results") == root / "benchmarks" / "results"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the notebook from a clone"):
        course.recorded("results", "course")
