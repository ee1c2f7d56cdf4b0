"""``benchmarks/memory_traffic.py``: its byte counter, and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "memory_traffic.py"


def _load():
    spec = importlib.util.spec_from_file_location("memory_traffic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_traffic_counter_counts_reads_and_writes_but_not_views():
    counter_cls = _load().TrafficCounter
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    with counter_cls() as counter:
        c = a + b  # two tensors read, one written: 3 × 32 floats
        c.t().reshape(-1)  # a view of a transpose that must be copied: one read, one write
        c.view(4, 8)  # a view: nothing moves
    assert counter.calls == 2
    assert counter.bytes == (3 + 2) * 32 * 4


def test_script_runs_and_reports_both_parts():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--batch", "2", "--reps", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    lines = result.stdout.splitlines()
    for part in ("inner + patch residual", "outer"):
        row = next(line for line in lines if line.startswith(part))
        ms, mib, ops = (float(x) for x in row[len(part):].split()[:3])
        assert ms > 0 and mib > 0 and ops > 10
    assert any(line.startswith("LayerNorm (32, 16, 12)") for line in lines)
    assert any("matrix products for the moments" in line for line in lines)
