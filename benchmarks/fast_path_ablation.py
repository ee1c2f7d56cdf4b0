#!/usr/bin/env python
"""What the fast paths of TITN are worth on CPU: the model with and without them, against timm's TNT.

    python benchmarks/fast_path_ablation.py [--mode train|infer] [--rounds 12] [--threads 2] [--batch 128]

Variants (same weights): ``accelerated`` (:func:`titn_edu.accel.accelerate`: the inner blocks on
the compiled kernel, attention elsewhere on PyTorch's fused kernel), ``plain`` (the model as
built: PyTorch operators, fused attention), ``reference`` (``set_fast_path(model, False)``: eq. 1
written out everywhere), timm's TNT, and — as a bound, not a TITN — ``deit-bound``:
``build_model("deit")``, i.e. TITN's outer stream alone (the same 18 tokens, heads and
distillation token) with the inner stream taken out, as if it cost nothing. Each round runs every
variant once (order reversed every other round); the figure per variant is the median over rounds
of TNT's time / the variant's time in the same round (wall clock), i.e. the speed relative to TNT. Needs the benchmark extra (timm).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from titn_edu import accel, build_model, set_fast_path
from titn_edu.bench import _make_step, build_timm_tnt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model("titn", num_classes=100)

    models = {
        "accelerated": accel.accelerate(copy.deepcopy(base)),
        "plain": base,
        "reference": set_fast_path(copy.deepcopy(base), False),
        "timm-tnt": build_timm_tnt(base.config),
        "deit-bound": build_model("deit", num_classes=100),
    }
    images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 100, (args.batch,))
    steps = {name: _make_step(m, args.mode, images, labels, amp=False, compile=False) for name, m in models.items()}
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, mode {args.mode}, "
          f"{args.rounds} rounds, wall-clock time per step")
    print("| variant | median s per step | images per s | speed vs timm TNT (median of per-round ratios) | min | max |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = times["timm-tnt"]
    for name in names:
        ratios = [ref[i] / times[name][i] for i in range(args.rounds)]
        med = statistics.median(times[name])
        print(f"| {name} | {med:.3f} | {args.batch / med:.1f} | {statistics.median(ratios):.3f} | "
              f"{min(ratios):.3f} | {max(ratios):.3f} |")
    print(f"accelerator library: {accel.library_path()}")


if __name__ == "__main__":
    main()
