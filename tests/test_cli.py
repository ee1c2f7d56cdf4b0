"""The ``titn-edu`` command line: a tiny real run, evaluation, export, and the promised errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from titn_edu import load_model
from titn_edu.cli import PRESETS, main

TINY = [
    "--dataset", "mnist", "--model", "titn-tiny",
    "--model-arg", "depth=1", "--model-arg", "outer_dim=16", "--model-arg", "inner_dim=4",
    "--model-arg", "patch_size=16", "--model-arg", "pixel_size=8",
    "--teacher", "cnn-small", "--teacher-arg", "width=2", "--teacher-epochs", "1",
    "--epochs", "1", "--batch-size", "20", "--limit", "60", "--test-limit", "30", "--val-size", "20",
    "--no-progress", "--threads", "1", "--device", "cpu",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--output", str(out)]) == 0
    return out


def test_train_writes_metrics_and_loadable_checkpoints(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("test_top1", "test_top5", "precision", "recall", "f1", "params", "gflops", "wall_seconds"):
        assert isinstance(metrics[key], (int, float)), key
    assert 0 <= metrics["test_top1"] <= metrics["test_top5"] <= 100 and 0 <= metrics["f1"] <= 1
    assert metrics["status"] == "completed" and metrics["test_samples"] == 30
    assert len(metrics["history"]["epochs"]) == 1 and len(metrics["teacher_history"]["epochs"]) == 1
    assert metrics["teacher"]["name"] == "cnn-small" and metrics["config"]["model_args"]["depth"] == 1
    student = load_model(metrics["checkpoints"]["student"])
    teacher = load_model(metrics["checkpoints"]["teacher"])
    assert student.config["depth"] == 1 and student.config["in_chans"] == 1
    assert teacher.config == {"name": "cnn-small", "num_classes": 10, "in_chans": 1, "width": 2}
    for stage in ("teacher", "student"):
        assert {"last.pt", "best.pt", "history.json"} <= {p.name for p in (tiny_run / stage).iterdir()}


def test_train_with_data_on_the_device_and_a_bf16_teacher(tiny_run, tmp_path, monkeypatch):
    import titn_edu.device_data as device_data

    made = []
    real_init = device_data.DeviceLoader.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append((len(self.images), self.batch_size, self.train))

    monkeypatch.setattr(device_data.DeviceLoader, "__init__", spy)
    assert main(["train", *TINY, "--device-data", "--teacher-bf16", "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["config"]["device_data"] is True
    # the validation (20) and test (30) images scored on the device in their order, then the teacher and the
    # student each fed by a DeviceLoader (--limit 60)
    assert made == [(20, 256, False), (30, 256, False), (60, 20, True), (60, 20, True)]
    student = json.loads((tmp_path / "student" / "history.json").read_text())
    assert len(student["epochs"]) == 1
    plain = json.loads((tiny_run / "metrics.json").read_text())
    assert plain["config"]["device_data"] is False  # CPU default: the per-image path


def test_init_from_starts_the_student_from_trained_weights(tiny_run, tmp_path, capsys):
    """--init-from: a new run whose student starts from a checkpoint (fine-tuning), not from scratch."""
    import torch

    start = tiny_run / "student" / "last.pt"
    argv = ["train", *TINY, "--teacher", "none", "--lr", "1e-9", "--init-from", str(start), "--output", str(tmp_path)]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["init_from"] == str(start)
    before, after = load_model(start).state_dict(), load_model(tmp_path / "student" / "last.pt").state_dict()
    for key in before:  # one epoch at lr 1e-9 leaves the loaded weights where they were
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0, msg=key)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # another architecture: a usage error naming the fix
        main([*argv[:-2], "--model-arg", "outer_dim=8", "--output", str(tmp_path / "other")])
    assert exc.value.code == 2 and "do not fit the student" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-4], "--init-from", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "other")])
    assert exc.value.code == 2 and "missing.pt" in capsys.readouterr().err


def test_evaluate_command(tiny_run, tmp_path, capsys):
    code = main(["evaluate", str(tiny_run / "student"), "--limit", "20", "--output", str(tmp_path), "--threads", "1"])
    assert code == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["dataset"] == "mnist" and result["test_samples"] == 20  # dataset read from the checkpoint
    assert len(result["confusion_matrix"]) == 10
    assert "top-1" in capsys.readouterr().out


def test_resume_of_a_finished_run_does_no_more_work(tiny_run, capsys):
    assert main(["train", "--resume", str(tiny_run), "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert len(metrics["history"]["epochs"]) == 1 and metrics["status"] == "completed"


def test_data_export(tmp_path):
    assert main(["data", "export", "mnist", "--out", str(tmp_path), "--splits", "test"]) == 0
    assert (tmp_path / "mnist-npz" / "mnist_test.npz").is_file()


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", *TINY, "--output", str(tmp_path / "out"), "--data-root", str(empty), "--no-download"])
    err = capsys.readouterr().err
    assert code == 1 and "TITN_EDU_DATA" in err and str(empty) in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dataset", "imagenet", "--output", "x"],
        ["train", "--dataset", "mnist", "--model", "resnet9000", "--output", "x"],
        ["train", "--preset", "paper-imagenet", "--output", "x"],
        ["train", "--dataset", "mnist", "--epochs", "-1", "--output", "x"],
        ["train", "--dataset", "mnist", "--epochs", "0", "--output", "x"],
        ["train", "--dataset", "mnist", "--lr", "-0.1", "--output", "x"],
        ["train", "--dataset", "mnist", "--lr", "nan", "--output", "x"],
        ["train", "--dataset", "mnist", "--batch-size", "0", "--output", "x"],
        ["train", "--dataset", "mnist", "--alpha", "1.5", "--output", "x"],
        ["train", "--dataset", "mnist", "--warmup-epochs", "-1", "--output", "x"],
        ["train", "--dataset", "mnist", "--model-arg", "depth", "--output", "x"],
        ["train", "--dataset", "mnist", "--teacher", "no-such-teacher-or-file", "--output", "x"],
        ["train", "--dataset", "mnist", "--device", "quantum", "--output", "x"],
        ["train", "--epochs", "1", "--output", "x"],  # no dataset, no preset
        ["train", "--dataset", "mnist"],  # no output
        ["evaluate"],
        ["data", "export", "imagenet", "--out", "x"],
        ["fly"],
    ],
)
def test_bad_arguments_exit_2_without_traceback(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_model_argument_value_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "mnist", "--model-arg", "depth=-3", "--output", str(tmp_path / "o")])
    assert exc.value.code == 2 and "depth" in capsys.readouterr().err


def test_console_entry_point_runs_as_module():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-m", "titn_edu", "train", "--batch-size", "0"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "--batch-size" in result.stderr and "Traceback" not in result.stderr


def test_presets_follow_the_paper():
    for name in ("paper-mnist", "paper-cifar10", "paper-cifar100"):
        p = PRESETS[name]
        assert (p["model"], p["teacher"], p["optimizer"], p["lr"], p["batch_size"]) == ("titn", "vgg16_bn", "paper", 0.1, 1024)
        assert (p["mixing"], p["mix_alpha"], p["distillation"], p["alpha"]) == ("cutmix", 0.5, "hard", 0.5)


def test_bench_subcommand_is_handed_to_the_benchmark(capsys):
    from titn_edu.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--rounds", "0"])
    assert exc.value.code == 2 and "rounds must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0 and "timm's TNT" in capsys.readouterr().out


def test_time_limit_stops_in_slices_and_resume_finishes(tmp_path, capsys):
    """--time-limit stops after an epoch (exit 75, last.pt kept); --resume continues to the end."""
    argv = ["train", *TINY, "--epochs", "2", "--output", str(tmp_path)]
    argv[argv.index("--epochs") + 1] = "2"
    assert main([*argv, "--time-limit", "0.0001"]) == 75
    err = capsys.readouterr().err
    assert f"--resume {tmp_path}" in err and "Traceback" not in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "student stopped"  # the teacher's only epoch was its last: completed
    assert len(json.loads((tmp_path / "student" / "history.json").read_text())["epochs"]) == 1
    assert main(["train", "--resume", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]["epochs"]) == 2
    assert [r["stage"] for r in metrics["timeline"]] == ["teacher", "student", "student"]
    first, second = metrics["commands"]                       # both slices' commands, the first started it
    assert "--time-limit" in first and "--output" in first and second == metrics["command"] and "--resume" in second
    # Epochs of the earlier slice have no wall-clock minutes in this command, but keep their training time.
    assert metrics["timeline"][0]["minutes"] is None and metrics["timeline"][-1]["minutes"] >= 0
    assert metrics["timeline"][-1]["train_minutes"] > metrics["timeline"][0]["train_minutes"]


def test_time_limit_stops_when_another_epoch_as_long_would_pass_it():
    import time

    from titn_edu.cli import _time_limit

    [over] = _time_limit(1.0, time.perf_counter() - 50.0)  # a one-minute slice, 50 s in
    assert not over({"seconds": 5.0}) and over({"seconds": 15.0})
    assert _time_limit(None, 0.0) == []


def test_cifar10_quick_runs_at_a_tiny_budget(tmp_path, monkeypatch):
    """The preset's whole path (ResNet-9 teacher, TITN student, batches augmented on the CPU, the
    test set tracked every epoch) at a few seconds' budget; its real figures are a recorded run."""
    import titn_edu.device_data as device_data

    levels = []
    real_init = device_data.DeviceLoader.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        levels.append(self.transform.level)

    monkeypatch.setattr(device_data.DeviceLoader, "__init__", spy)
    code = main(["train", "--preset", "cifar10-quick", "--limit", "256", "--test-limit", "100", "--epochs", "1",
                 "--teacher-epochs", "1", "--model-arg", "depth=1", "--threads", "1", "--no-progress",
                 "--output", str(tmp_path)])
    assert code == 0 and levels == ["crop-flip", "crop-flip"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["teacher"]["name"] == "resnet9" and metrics["config"]["label_smoothing"] == 0.1
    assert metrics["command"].startswith("titn-edu train --preset cifar10-quick")
    assert metrics["machine"]["cores"] >= 1 and "cpu" in metrics["machine"]
    assert [(r["stage"], r["epoch"]) for r in metrics["timeline"]] == [("teacher", 1), ("student", 1)]
    assert all(0 <= r["test_top1"] <= 100 and r["minutes"] >= 0 for r in metrics["timeline"])
    assert metrics["timeline"][-1]["test_top1"] == metrics["history"]["epochs"][-1]["test_top1"]


def test_gpu_preset_reaches_fit_and_the_data_on_the_device(tmp_path, monkeypatch):
    """gpu-cifar10's settings of its own (teacher warm-up and augmentation, AutoAugment group, gradient
    clipping, checkpoint cadence) reach fit and the DeviceLoaders; its real figures come from a GPU."""
    import titn_edu.device_data as device_data
    import titn_edu.train as train

    loaders, fits = [], []
    real_init, real_fit = device_data.DeviceLoader.__init__, train.fit

    def spy_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        loaders.append((len(self.images), self.train, self.transform.level, self.transform.policy_group))

    def spy_fit(*args, **kwargs):
        fits.append({k: kwargs.get(k) for k in ("warmup_epochs", "grad_clip", "save_every", "batch_size", "lr")})
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(device_data.DeviceLoader, "__init__", spy_init)
    monkeypatch.setattr(train, "fit", spy_fit)
    code = main(["train", "--preset", "gpu-cifar10", "--limit", "64", "--test-limit", "20", "--epochs", "3",
                 "--teacher-epochs", "1", "--model-arg", "depth=1", "--teacher-arg", "width=4", "--batch-size", "16",
                 "--policy-group", "4", "--save-every", "2", "--threads", "1", "--no-progress", "--no-accelerate",
                 "--output", str(tmp_path)])
    if code == 1 and not (tmp_path / "teacher").exists():
        pytest.skip("CIFAR-10 is not available offline (set TITN_EDU_DATA)")
    assert code == 0
    assert loaders == [(20, False, "none", 8), (64, True, "crop-flip", 4), (64, True, "paper", 4)]
    assert fits == [dict(warmup_epochs=2.0, grad_clip=None, save_every=2, batch_size=512, lr=0.4),
                    dict(warmup_epochs=10.0, grad_clip=1.0, save_every=2, batch_size=16, lr=2e-3)]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["model_args"] == {"drop_path": 0.1, "depth": 1} and metrics["teacher"]["name"] == "resnet9"
    assert [r["test_top1"] is not None for r in metrics["timeline"]] == [True] * 4  # the test set every epoch


def test_a_shipped_teacher_can_teach(tmp_path):
    argv = [a if a != "cnn-small" else "pretrained:teacher-mnist" for a in TINY]
    assert main(["train", *argv, "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["teacher"]["name"] == "pretrained:teacher-mnist"
    assert metrics["checkpoints"]["teacher"] == "pretrained:teacher-mnist" and "teacher_history" not in metrics
    assert metrics["teacher"]["test_top1"] > 90


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "mnist", "--teacher", "pretrained:teacher-imagenet", "--output", "x"],
    ["train", "--dataset", "mnist", "--augment", "heavy", "--output", "x"],
    ["train", "--dataset", "mnist", "--label-smoothing", "1.5", "--output", "x"],
    ["train", "--dataset", "mnist", "--time-limit", "0", "--output", "x"],
    ["train", "--dataset", "mnist", "--weight-decay", "-1", "--output", "x"],
])
def test_new_flags_reject_bad_values(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_shipped_teacher_for_another_dataset_is_refused(tmp_path, capsys):
    argv = [a if a != "cnn-small" else "pretrained:teacher-cifar10" for a in TINY]
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv, "--output", str(tmp_path / "o")])
    assert exc.value.code == 2 and "cifar10, not mnist" in capsys.readouterr().err


def test_another_model_than_the_presets_drops_the_presets_model_arguments():
    from titn_edu.cli import _settings, build_parser

    parser = build_parser()
    other = _settings(parser.parse_args(["train", "--preset", "cifar10-quick", "--model", "vit-tiny",
                                         "--model-arg", "depth=2"]), parser, None)
    assert other["model"] == "vit-tiny" and other["model_args"] == {"depth": 2}
    same = _settings(parser.parse_args(["train", "--preset", "cifar10-quick", "--model", "titn"]), parser, None)
    assert same["model_args"]["outer_dim"] == 192 and same["model_args"]["depth"] == 4


def test_teacher_optimizer_and_learning_rate_flags_override_the_preset():
    from titn_edu.cli import _settings, build_parser

    parser = build_parser()
    s = _settings(parser.parse_args(["train", "--preset", "cifar10-quick", "--teacher-optimizer", "adamw",
                                     "--teacher-lr", "0.003"]), parser, None)
    assert s["teacher_optimizer"] == "adamw" and s["teacher_lr"] == 0.003
    default = _settings(parser.parse_args(["train", "--preset", "cifar10-quick"]), parser, None)
    assert default["teacher_optimizer"] == "sgd" and default["teacher_lr"] == 0.2


def test_a_teacher_at_chance_level_is_reported(capsys):
    from titn_edu.cli import _warn_if_at_chance

    _warn_if_at_chance({"test_top1": 10.0}, "cifar10")
    assert "warning: the teacher is at chance level (10.00 %" in capsys.readouterr().out
    _warn_if_at_chance({"test_top1": 80.4}, "cifar10")
    assert capsys.readouterr().out == ""
