"""The shipped models: the stable API, integrity checks, size, and the recorded metrics reproduced."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import titn_edu
from titn_edu import pretrained
from titn_edu.checkpoint import CheckpointError
from titn_edu.model import TITN

REQUIRED = ["teacher-cifar10", "teacher-mnist", "titn-cifar10", "titn-mnist"]


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """A copy of the shipped weights that a test may damage; the package points at it."""
    folder = tmp_path / "weights"
    shutil.copytree(pretrained.weights_dir(), folder)
    monkeypatch.setattr(pretrained, "weights_dir", lambda: folder)
    return folder


def test_the_required_models_are_listed():
    names = titn_edu.list_pretrained()
    assert set(REQUIRED) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", REQUIRED)
def test_load_pretrained_gives_an_eval_model_with_its_record(name):
    model = titn_edu.load_pretrained(name)
    info = model.pretrained_info
    assert not model.training
    assert info["name"] == name and info["role"] in ("student", "teacher")
    assert titn_edu.count_parameters(model) == info["params"]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert isinstance(model, TITN) == (info["role"] == "student")
    assert info == {**titn_edu.pretrained_info(name), "name": name}
    in_chans = 1 if info["dataset"] == "mnist" else 3
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_pretrained_info_is_a_copy():
    info = titn_edu.pretrained_info("titn-mnist")
    info["metrics"]["test_top1"] = -1.0
    assert titn_edu.pretrained_info("titn-mnist")["metrics"]["test_top1"] >= 0


def test_every_teacher_is_stronger_than_its_student():
    for dataset in ("cifar10", "mnist"):
        teacher = titn_edu.pretrained_info(f"teacher-{dataset}")["metrics"]["test_top1"]
        student = titn_edu.pretrained_info(f"titn-{dataset}")["metrics"]["test_top1"]
        assert teacher > student, (dataset, teacher, student)


def test_the_shipped_weights_fit_the_size_budget_and_match_the_manifest():
    folder = pretrained.weights_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    total = 0
    for name, entry in manifest["models"].items():
        path = folder / entry["file"]
        assert path.stat().st_size == entry["bytes"], name
        total += entry["bytes"]
    assert total <= 10 * 1024 * 1024, f"shipped weights take {total:,} bytes, above the 10 MB budget"
    stray = {p.name for p in folder.glob("*.pt")} - {e["file"] for e in manifest["models"].values()}
    assert not stray, f"weights files without a manifest entry: {stray}"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pretrained model 'titn-imagenet'.*titn-cifar10"):
        titn_edu.load_pretrained("titn-imagenet")
    with pytest.raises(TypeError, match="string"):
        titn_edu.load_pretrained(3)


def test_a_truncated_file_is_refused_by_name(weights_copy):
    path = weights_copy / "titn-mnist.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(pretrained.PretrainedIntegrityError, match=r"titn-mnist\.pt.*changed or truncated.*git checkout"):
        titn_edu.load_pretrained("titn-mnist")


def test_a_changed_file_is_refused_even_when_it_still_loads(weights_copy):
    from titn_edu.checkpoint import load_checkpoint, save_checkpoint
    from titn_edu.checkpoint import build_from_spec

    path = weights_copy / "teacher-mnist.pt"
    ckpt = load_checkpoint(path)
    model = build_from_spec(ckpt["model"])
    save_checkpoint(path, model)  # a valid checkpoint, other weights
    with pytest.raises(CheckpointError, match="teacher-mnist"):
        titn_edu.load_pretrained("teacher-mnist")


def test_a_missing_file_says_how_to_restore_it(weights_copy):
    (weights_copy / "titn-cifar10.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"titn-cifar10\.pt.*does not exist.*reinstall"):
        titn_edu.load_pretrained("titn-cifar10")


def test_a_missing_manifest_is_a_clear_error(weights_copy):
    (weights_copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest"):
        titn_edu.list_pretrained()


@pytest.mark.parametrize("name", REQUIRED)
def test_the_recorded_check_subset_accuracy_is_reproduced(name):
    """Each shipped file scores what its manifest says on the fixed check subset of its test split."""
    model = titn_edu.load_pretrained(name)
    info = model.pretrained_info
    subset = pretrained.check_subset(info["dataset"])
    assert len(subset) == info["check"]["samples"] == pretrained.CHECK_SUBSET["limit"]
    result = titn_edu.evaluate(model, subset, device="cpu")
    # Another machine's float rounding may flip a near tie: allow two images of 2,000.
    assert abs(result["top1"] - info["check"]["top1"]) <= 0.1, (result["top1"], info["check"])
    assert result["top1"] > 90.0 if info["dataset"] == "mnist" else result["top1"] > 60.0


def test_publish_writes_float16_weights_and_a_manifest_entry_that_load_pretrained_trusts(tmp_path, monkeypatch):
    from titn_edu import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("titn-tiny", num_classes=10, in_chans=1, depth=1, outer_dim=16, inner_dim=4, patch_size=16,
                        pixel_size=8, outer_heads=2, inner_heads=2)
    ckpt = save_checkpoint(tmp_path / "run" / "last.pt", model, epoch=3)
    folder = tmp_path / "weights"
    entry = pretrained.publish("tiny-mnist", ckpt, dataset="mnist", role="student",
                               training={"command": "titn-edu train ...", "device": "cpu"}, folder=folder)
    assert entry["file"] == "tiny-mnist.pt" and entry["dtype"] == "float16" and entry["bytes"] > 0
    assert entry["metrics"]["test_samples"] == 10_000 and entry["check"]["samples"] == 2_000
    assert abs(entry["metrics"]["test_top1"] - entry["metrics"]["test_top1_float32"]) <= 1.0
    stored = torch.load(folder / "tiny-mnist.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in stored["state_dict"].values() if v.is_floating_point())
    assert stored["extra"]["run_info"] == {"dataset": "mnist", "role": "student"}
    # so `titn-edu evaluate` finds the dataset of a shipped file by itself
    from titn_edu.cli import main
    assert main(["evaluate", str(folder / "tiny-mnist.pt"), "--limit", "64", "--threads", "1",
                 "--output", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["dataset"] == "mnist"
    monkeypatch.setattr(pretrained, "weights_dir", lambda: folder)
    assert titn_edu.list_pretrained() == ["tiny-mnist"]
    loaded = titn_edu.load_pretrained("tiny-mnist")
    for name, p in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p.half().float())
    assert loaded.pretrained_info["training"]["command"] == "titn-edu train ..."
    with pytest.raises(ValueError, match="role"):
        pretrained.publish("x", ckpt, dataset="mnist", role="assistant", training={}, folder=folder)


def test_the_readme_table_of_shipped_models_is_the_manifests(load_script):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start, end = "<!-- pretrained:start -->\n", "\n<!-- pretrained:end -->"
    between = readme[readme.index(start) + len(start):readme.index(end)]
    assert between == load_script("ship_pretrained").table(), "README out of date: paste `python scripts/ship_pretrained.py --table`"


def test_a_fine_tuned_student_records_where_it_started_and_its_teacher(load_script):
    record = {"command": "titn-edu train --init-from a.pt", "status": "completed",
              "config": {"preset": "titn-cifar10", "device": "cpu", "threads": 2, "seed": 0,
                         "init_from": "a.pt", "teacher": "pretrained:teacher-cifar10"},
              "history": {"epochs": [{"seconds": 60.0}, {"seconds": 30.0}]}}
    student = load_script("ship_pretrained")._training(record, "student")
    assert student["init_from"] == "a.pt" and student["teacher"] == "pretrained:teacher-cifar10"
    assert student["epochs"] == 2 and student["train_seconds"] == 90.0 and student["commands"] == [record["command"]]
    assert load_script("ship_pretrained")._training(record, "teacher")["init_from"] is None


def test_a_teacher_can_be_shipped_while_its_student_still_trains(tmp_path, load_script):
    finished = load_script("ship_pretrained").finished_checkpoint
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "last.pt").write_bytes(b"")
    training = {"status": "student stopped", "teacher_history": {"status": "completed"}}
    assert finished(tmp_path, training, "teacher") == str(tmp_path / "teacher" / "last.pt")
    assert finished(tmp_path, training, "student") is None  # the student has not finished
    assert finished(tmp_path, {"status": "teacher stopped", "teacher_history": {"status": "stopped"}}, "teacher") is None
    done = {"status": "completed", "checkpoints": {"student": "s.pt", "teacher": "t.pt"}}
    assert finished(tmp_path, done, "student") == "s.pt" and finished(tmp_path, done, "teacher") == "t.pt"


# The shipped titn-cifar10's training, stage by stage: (the evaluation of the weights a fine-tuning run started
# from, kept in results/titn-cifar10/; that run's metrics.json). Stage 1 is the preset's student after 36 epochs.
TITN_CIFAR10_CHAIN = [("titn_cifar10_stage1_epoch36.json", "titn_cifar10_finetune_seed0.json"),
                      ("titn_cifar10_stage2_finetune28.json", "titn_cifar10_finetune2_seed0.json"),
                      ("titn_cifar10_stage3_finetune2_28.json", "titn_cifar10_stage4_cutmix_seed0.json"),
                      ("titn_cifar10_stage4_cutmix56.json", "titn_cifar10_stage5_cutmix_seed0.json")]


def test_the_shipped_titn_cifar10_comes_from_its_recorded_runs():
    """Stage 1 -> a run -> its weights -> the next run ... -> shipped: every link recorded."""
    root = Path(__file__).parents[1]
    entry = titn_edu.pretrained_info("titn-cifar10")
    records = [[json.loads((root / "benchmarks" / "results" / name).read_text()) for name in pair]
               for pair in TITN_CIFAR10_CHAIN]
    for k, (start, run) in enumerate(records):
        assert (root / start["checkpoint"]).is_file() and start["dataset"] == "cifar10" and start["test_samples"] == 10_000
        assert run["status"] == "completed" and run["config"]["init_from"] == start["checkpoint"]
        assert run["config"]["teacher"] == "pretrained:teacher-cifar10"
        assert run["history"]["epochs"][0]["test_top1"] > start["test_top1"] - 2  # it continued, it did not restart
        if k:  # the weights this run started from are the previous run's result
            assert abs(start["test_top1"] - records[k - 1][1]["test_top1"]) < 0.05
    start, run = records[-1]
    assert run["command"] == entry["training"]["command"] and start["checkpoint"] == entry["training"]["init_from"]
    assert run["commands"] == entry["training"]["commands"]
    assert abs(run["test_top1"] - entry["metrics"]["test_top1_float32"]) < 0.05
    assert entry["training"]["teacher"] == "pretrained:teacher-cifar10"


def test_accuracy_vs_time_reads_a_resumed_run_on_its_training_clock(load_script):
    """A resumed run's earlier slices have no wall-clock minutes, and its last slice's clock restarts at 0."""
    table = load_script("accuracy_vs_time")
    def epoch(k, minutes, train_minutes):
        return {"stage": "student", "epoch": k, "minutes": minutes, "train_minutes": train_minutes, "test_top1": 50.0 + k}
    resumed = {"timeline": [epoch(1, None, 4.0), epoch(2, None, 8.0), epoch(3, 4.5, 12.0)]}
    assert table.clock(resumed) == "train_minutes"
    assert table.at_minutes(resumed, 5)["epoch"] == 1 and table.at_minutes(resumed, 12)["epoch"] == 3
    one_slice = {"timeline": [epoch(1, 4.5, 4.0), epoch(2, 9.0, 8.0)]}
    assert table.clock(one_slice) == "minutes"
    assert table.at_minutes(one_slice, 4.2) is None and table.at_minutes(one_slice, 9)["epoch"] == 2


def test_accuracy_vs_time_reads_a_run_by_student_epoch(load_script):
    """--epochs: the test top-1 after each student epoch asked for, with the epoch's own seconds; – past the end."""
    table = load_script("accuracy_vs_time")
    run = {"history": {"epochs": [{"epoch": k, "test_top1": 80.0 + k / 4, "seconds": 250.4 + k} for k in (1, 2, 3)]}}
    assert table.by_epoch(run, "run.json", [1, 3, 4])[-3:] == ["| 1 | 80.25 % | 251 |", "| 3 | 80.75 % | 253 |",
                                                               "| 4 | – | – |"]


def test_the_readme_curves_by_epoch_are_the_scripts_output(load_script):
    """Each README table under `accuracy_vs_time.py FILE --epochs ...` is what that command prints, row for row."""
    root = Path(__file__).parents[1]
    table = load_script("accuracy_vs_time")
    command = re.compile(r"```bash\n *python scripts/accuracy_vs_time\.py (\S+) --epochs ([\d ]+)\n *```\n"
                         r"(?:\n|.*\n){0,4}?((?: *\|.*\|\n)+)")
    found = command.findall((root / "README.md").read_text())
    assert len(found) >= 2, "expected the stage-4 and stage-5 curves of titn-cifar10 in the README"
    for path, epochs, shown in found:
        record = json.loads((root / path).read_text())
        printed = table.by_epoch(record, Path(path).name, [int(k) for k in epochs.split()])[2:]
        assert [line.strip() for line in shown.splitlines()] == printed, f"README's table for {path} is stale"
