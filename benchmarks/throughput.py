#!/usr/bin/env python
"""Throughput and peak memory of TITN against timm's TNT (same configuration), round by round.

    python benchmarks/throughput.py            # CPU: fp32, batch 128; GPU: bf16 + torch.compile, batch 1024
    python benchmarks/throughput.py --help

The logic lives in :mod:`titn_edu.bench` (``run_benchmark``); results are recorded in
``docs/performance.md``. Needs the benchmark extra: ``pip install -e ".[bench]"``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from titn_edu.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
