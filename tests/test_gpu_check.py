"""benchmarks/gpu_check.sh, the prepared GPU run, end to end on the CPU with tiny sizes (its quick mode)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HAS_TIMM = importlib.util.find_spec("timm") is not None


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_quick_run_on_cpu_uses_a_part_of_cifar10_and_reports_every_step(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    rng = np.random.default_rng(0)  # a stand-in part: the split's arrays, fewer images
    np.savez(parts / "cifar10_train.part00of04.npz", images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 64), classes=np.array([f"class{i}" for i in range(10)]))
    env = {k: v for k, v in os.environ.items() if k != "TITN_EDU_DATA"}  # so the part is used
    env.update(GPU_CHECK_DEVICE="cpu", GPU_CHECK_QUICK="1", PYTHON=sys.executable,
               GPU_CHECK_PARTS=str(parts), GPU_CHECK_WHEELS=str(tmp_path / "no-wheels"))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == (0 if HAS_TIMM else 1), proc.stdout + proc.stderr  # 1: a step failed
    status = dict(re.findall(r"^== (\w+): exit (\d+)", proc.stdout, flags=re.M))
    assert set(status) == {"throughput", "teacher_path", "teacher_train", "data_path"}, proc.stdout
    assert status["teacher_path"] == status["teacher_train"] == status["data_path"] == "0", proc.stdout
    assert "| cifar10 | 8 |" in (out / "data_path.log").read_text()
    assert "cnn-small" in (out / "teacher_train.log").read_text()
    assert "no CUDA device" in (out / "machine.log").read_text() or "NVIDIA" in (out / "machine.log").read_text()
    if HAS_TIMM:
        assert status["throughput"] == "0", (out / "throughput.log").read_text()
        raw = json.loads((out / "throughput.json").read_text())
        assert raw["settings"]["device"] == "cpu" and set(raw["ratios"]) == {"train", "infer"}
        assert re.search(r"^train +titn / timm-tnt images/s", (out / "throughput.log").read_text(), flags=re.M)
    else:  # the benchmark extra is missing: the step fails with the fix named, and the others still run
        assert status["throughput"] != "0" and "== failed: throughput" in proc.stdout
        assert 'pip install -e ".[bench]"' in (out / "throughput.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["machine.log", "throughput.log", "teacher_path.log", "teacher_train.log", "data_path.log"]
        + (["throughput.json"] if HAS_TIMM else []))  # nothing else left in the output folder


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_unknown_step_is_named_before_anything_runs(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "teacher", "gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown step 'gpu'" in proc.stderr and "throughput, teacher, data" in proc.stderr
    assert not (tmp_path / "out").exists()
