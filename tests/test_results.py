"""Run records and the README's reproduction table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from titn_edu.results import PAPER, load_results, record_result, reproduction_table

ROOT = Path(__file__).resolve().parent.parent


def _metrics(tmp_path, **extra):
    path = tmp_path / "run" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"test_top1": 93.12, "test_top5": 99.81, "wall_seconds": 540.0, **extra}))
    return path


def test_record_and_render(tmp_path):
    out = record_result(_metrics(tmp_path), tmp_path / "results" / "c10-titn.json", dataset="cifar10",
                        model="titn", role="student", device="H100", command="titn-edu train --preset paper-cifar10",
                        seconds_to_paper_top1=300.0)
    records = load_results(out.parent)
    assert records[0]["test_top1"] == 93.12 and records[0]["file"] == "c10-titn.json"
    table = reproduction_table(records)
    row = table.splitlines()[2]
    assert "93.12" in row and f"{PAPER['cifar10']['titn'][0]:.2f}" in row and "5.0 min" in row and "9.0 min" in row


def test_missing_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="missing .*device"):
        record_result(_metrics(tmp_path), tmp_path / "x.json", dataset="cifar10", model="titn", role="student",
                      command="c")
    (tmp_path / "bad.json").write_text(json.dumps({"dataset": "cifar10"}))
    with pytest.raises(ValueError, match="lacks"):
        load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        record_result(tmp_path / "nope.json", tmp_path / "y.json")


def test_no_results_folder_gives_an_empty_table(tmp_path):
    assert load_results(tmp_path / "absent") == []
    assert "No results recorded yet" in reproduction_table([])


def test_readme_table_is_up_to_date():
    """The README's table is exactly what the script generates from results/ (never typed by hand)."""
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduction_table.py")],
                             capture_output=True, text=True, check=True).stdout
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- reproduction:start -->\n", 1)[1].split("<!-- reproduction:end -->", 1)[0]
    assert section == printed, "README is stale: run python scripts/reproduction_table.py --write"


def test_reproduction_script_runs_in_slices_on_cpu(tmp_path):
    """The GPU reproduction path, at a tiny CPU budget: a slice cut short, a resumed slice, run records."""
    pytest.importorskip("torchvision")
    from titn_edu.data import get_dataset

    try:
        get_dataset("cifar10", train=False, limit=10, download=False)
    except FileNotFoundError:
        pytest.skip("CIFAR-10 is not available offline (set TITN_EDU_DATA)")
    script = [sys.executable, str(ROOT / "scripts" / "reproduce_cifar10.py"), "--output", str(tmp_path / "run"),
              "--tiny", "--record", "--results", str(tmp_path / "results")]
    smaller = ["--", "--limit", "300", "--test-limit", "100", "--val-size", "50", "--no-progress"]
    first = subprocess.run(script + ["--budget", "2"] + smaller, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "paused" in first.stdout or "status: completed" in first.stdout
    second = subprocess.run(script + smaller, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "status: completed" in second.stdout
    records = load_results(tmp_path / "results")
    assert {r["role"] for r in records} == {"teacher", "student"}
    student = next(r for r in records if r["role"] == "student")
    assert 0 <= student["test_top1"] <= 100 and student["params"] > 0 and student["train_images_per_second"] > 0
    assert "reproduce_cifar10.py" in student["command"]
