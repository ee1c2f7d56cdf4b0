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


def test_folded_attention_benchmark_computes_what_the_library_computes():
    """``benchmarks/folded_attention.py`` (a formulation tried and not adopted): same outputs and gradients."""
    path = SCRIPT.parent / "folded_attention.py"
    spec = importlib.util.spec_from_file_location("folded_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)  # float64: the folding is exact algebra, so only rounding may differ
    y = torch.randn(5, 16, 12, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(*shape, dtype=torch.float64).requires_grad_() for shape in ((36, 12), (12, 12), (12,))]
    grad = torch.randn(5, 16, 12, dtype=torch.float64)
    folded = torch.autograd.grad(module.folded(y, *weights, 2), [y, *weights], grad)
    plain = torch.autograd.grad(module.library(y, *weights, 2, "per_head"), [y, *weights], grad)
    for a, b in zip(folded, plain):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    result = subprocess.run([sys.executable, str(path), "--batch", "1", "--reps", "1"],
                            capture_output=True, text=True, timeout=300, check=True)
    assert "| folded |" in result.stdout and "| transposed |" in result.stdout
