"""scripts/gpu_run.sh, the prepared GPU run, end to end on the CPU with tiny sizes (its --quick mode), as the
three commands of the plan; the sizing arithmetic and the time-to-accuracy bookkeeping on their own."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_run.sh"
HAS_TIMM = importlib.util.find_spec("timm") is not None
sys.path.insert(0, str(ROOT / "scripts"))
import data_parts  # noqa: E402
import gpu_smoke  # noqa: E402
import reproduce_cifar10  # noqa: E402

needs_shell = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and timeout")


def _run(tmp_path: Path, out: str, *args: str, parts: Path) -> subprocess.CompletedProcess:
    """One command: a fresh output folder (as each command's comes back), the work folder kept between them."""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("TITN_EDU_DATA", "PYTHONPATH")}
    env.update(PYTHON=sys.executable, GPU_RUN_PARTS=str(parts))
    return subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path / out),
                           "--work", str(tmp_path / "work"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)


def _status(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^== (\w+): exit (\d+)", stdout, flags=re.M))


def _returned_files(out: Path) -> list[Path]:
    """What would come back from the output folder, checked against its limits (8 files, 16 MiB, 2 levels)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    for p in files:
        relative = p.relative_to(out)
        assert len(relative.parts) <= 2 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in relative.parts), p
        assert p.stat().st_size < 16 * 2**20, p
    return files


@needs_shell
def test_quick_run_on_cpu_as_the_three_commands_of_the_plan(tmp_path):
    rng = np.random.default_rng(0)  # a stand-in CIFAR-10: random images, the real format, split in three parts
    for split, n in (("train", 160), ("test", 64)):
        (tmp_path / "data" / "cifar10-npz").mkdir(parents=True, exist_ok=True)
        np.savez(tmp_path / "data" / "cifar10-npz" / f"cifar10_{split}.npz",
                 images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=rng.integers(0, 10, n),
                 classes=np.array([f"class{i}" for i in range(10)]))
    made = data_parts.split(tmp_path / "data", tmp_path / "made", 3)
    parts = tmp_path / "parts"  # what has arrived on the machine so far
    parts.mkdir()
    shutil.copy(made[0], parts)

    # command 1 travels with part 0; asked for the data too early, it names the missing part and goes on
    first = _run(tmp_path, "out1", "smoke", "throughput", "data", parts=parts)
    assert first.returncode == 1, first.stdout + first.stderr
    assert set(_status(first.stdout)) == {"smoke", "throughput", "data"} and _status(first.stdout)["smoke"] == "0"
    assert _status(first.stdout)["data"] == "1"
    assert "lacks cifar10.part01of03.npz, cifar10.part02of03.npz" in first.stdout
    smoke = json.loads((tmp_path / "out1" / "smoke.json").read_text())
    assert smoke["verdict"] == "pass" and all(c["ok"] for c in smoke["checks"].values())
    assert set(smoke["checks"]) == {"environment", "bf16", "compile", "device_data", "teacher", "student",
                                    "checkpoint", "sizing"}
    assert json.loads((tmp_path / "work" / "sizing.json").read_text())["measured"]["student_step"] > 0
    if HAS_TIMM:
        assert json.loads((tmp_path / "out1" / "throughput.json").read_text())["settings"]["modes"] == ["train"]
    assert f"== failed: {'' if HAS_TIMM else 'throughput '}data" in first.stdout  # timm: the benchmark extra
    assert sorted(p.name for p in _returned_files(tmp_path / "out1")) == sorted(
        ["summary.json", "gpu_run.log", "smoke.json"] + (["throughput.json"] if HAS_TIMM else []))

    shutil.copy(made[1], parts)
    second = _run(tmp_path, "out2", "data", parts=parts)  # command 2: the second part arrives, the third is named
    assert second.returncode == 1 and _status(second.stdout) == {"data": "1"}, second.stdout + second.stderr
    assert "lacks cifar10.part02of03.npz: send the missing part" in second.stdout
    assert sorted(p.name for p in _returned_files(tmp_path / "out2")) == ["gpu_run.log", "summary.json"]

    shutil.copy(made[2], parts)
    third = _run(tmp_path, "out3", "tta", "course", parts=parts)  # command 3: the last part, then the timed run
    assert third.returncode == 0, third.stdout + third.stderr
    assert _status(third.stdout) == {"data": "0", "tta": "0", "course": "0"}
    out = tmp_path / "out3"
    assert sorted(p.relative_to(out).as_posix() for p in _returned_files(out)) == sorted([
        "summary.json", "gpu_run.log", "tta_metrics.json", "course_metrics.json",
        "results/gpu-cifar10-resnet9-teacher.json", "results/gpu-cifar10-titn-tiny-student.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == ["data", "tta", "course"] and summary["failed"] == []
    student = json.loads((out / "results" / "gpu-cifar10-titn-tiny-student.json").read_text())
    assert student["role"] == "student" and student["preset"] == "gpu-cifar10" and student["epochs"] == 2
    assert student["target_top1"] == 92.03 and student["seconds_to_target"] is None  # random images: never
    assert student["train_images_per_second"] > 0 and student["device"].startswith("CPU")
    assert student["test_samples"] == 64 and len(student["slices"]) == 1 and student["mfu"] is None
    assert all(e["train_seconds"] > 0 for e in student["history"]["epochs"])
    assert json.loads((out / "tta_metrics.json").read_text())["status"] == "completed"
    course = json.loads((out / "course_metrics.json").read_text())
    assert course["status"] == "completed" and course["config"]["preset"] == "titn-cifar10"


@needs_shell
@pytest.mark.parametrize("args, message", [
    (["smoke", "gpu"], "unknown argument 'gpu'"),
    (["--device", "tpu"], "--device must be cuda or cpu"),
    (["--budget", "0"], "--budget and --deadline take whole seconds"),
])
def test_bad_arguments_stop_before_anything_runs(tmp_path, args, message):
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out"), *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_sizing_fits_the_epochs_into_the_budget():
    measured = dict(teacher_step=0.03, teacher_eval=0.1, student_step=0.025, student_eval=0.2, compile=50.0,
                    checkpoint=0.25)
    settings = dict(batch_size=1024, teacher_batch_size=512, teacher_epochs=30, save_every=10)
    sizing = gpu_smoke.size_run(measured, budget=378.0, settings=settings)
    teacher_epoch = 97 * 0.03 + 0.1  # 50,000 // 512 full batches
    student_epoch = 48 * 0.025 + 0.2 + 2 * 0.25 / 10  # 50,000 // 1024 full batches, and a tenth of 2 checkpoints
    assert sizing["teacher_epoch_seconds"] == pytest.approx(teacher_epoch)
    assert sizing["student_epoch_seconds"] == pytest.approx(student_epoch)
    assert sizing["teacher_epochs"] == 18  # capped at 15 % of the budget: 56.7 s / 3.01 s
    fixed = 30 + 50 + 3 * 0.2
    assert sizing["epochs"] == int(0.85 * (378 - fixed - 18 * teacher_epoch) / student_epoch)
    assert sizing["expected_seconds"] < 378
    slow = gpu_smoke.size_run(dict(measured, student_step=100.0), budget=378.0, settings=settings)
    assert slow["epochs"] == 1  # never below one epoch
    assert reproduce_cifar10.time_limit(420) == 378 and reproduce_cifar10.time_limit(2) == 1


def test_time_to_target_counts_the_slices_and_leaves_out_the_pauses():
    epochs = [{"seconds": 10.0, "test_top1": 50.0, "finished_at": 1010.0},
              {"seconds": 10.0, "test_top1": 91.0, "finished_at": 1020.0},  # the first slice ends at 1025
              {"seconds": 12.0, "test_top1": 92.5, "finished_at": 2015.0},  # resumed at 2000
              {"seconds": 12.0, "test_top1": 93.0, "finished_at": 2027.0}]
    metrics = {"history": {"epochs": epochs}, "teacher_history": {"epochs": [{"seconds": 5.0}]}}
    slices = [{"start": 2000.0, "end": 2030.0}, {"start": 995.0, "end": 1025.0}]
    wall, epoch_sum = reproduce_cifar10.seconds_to_target(metrics, 92.03, slices)
    assert wall == pytest.approx(30.0 + 15.0) and epoch_sum == pytest.approx(5 + 10 + 10 + 12)
    assert reproduce_cifar10.seconds_to_target(metrics, 99.0, slices) == (None, None)
    assert reproduce_cifar10.seconds_to_target(metrics, 40.0, [])[0] is None  # no slice noted: no wall time


def test_speed_and_mfu_follow_the_flops():
    history = [{"train_images": 49_152, "train_seconds": 1.0}, {"train_images": 49_152, "train_seconds": 1.0}]
    row = reproduce_cifar10.speed(history, 0.2225, 0.76, "NVIDIA H200")
    assert row["train_images_per_second"] == 49_152 and row["peak_tflops"] == 989.4
    assert row["mfu"] == pytest.approx(3 * 0.2225e9 * 49_152 / 989.4e12)
    assert row["mfu_with_teacher"] == pytest.approx((3 * 0.2225e9 + 0.76e9) * 49_152 / 989.4e12)
    assert reproduce_cifar10.speed(history, 0.2225, None, "CPU: Xeon")["mfu"] is None
