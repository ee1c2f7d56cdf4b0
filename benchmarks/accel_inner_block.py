#!/usr/bin/env python
"""One inner (pixel) transformer block on CPU: the accelerator's compiled kernel against PyTorch.

    python benchmarks/accel_inner_block.py [--patches 2048] [--threads 2] [--rounds 15]

Times ``TransformerBlock(dim=12, num_heads=2)`` on ``(patches, 16, 12)`` pixel tokens (2,048 =
batch 128 × 16 patches), inference (forward, no gradients) and training (forward + backward),
three ways alternated round by round in one process: with the kernel (:mod:`titn_edu.accel`), on
PyTorch's operators with fused attention (the plain model), and with eq. 1 written out
(``set_fast_path(block, False)``). Prints medians in ms, the speed-ups, and the largest
difference of the kernel's outputs and input gradients from PyTorch's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from titn_edu import TransformerBlock, accel, set_fast_path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = TransformerBlock(dim=12, num_heads=2)
    fast = accel.accelerate(copy.deepcopy(plain))
    if fast.accelerator is None:
        sys.exit("the kernel is not available here (see the warning above); nothing to compare")
    written_out = set_fast_path(copy.deepcopy(plain), False)
    x = torch.randn(args.patches, 16, 12)
    xg = x.clone().requires_grad_()
    grad = torch.randn_like(x)

    def infer(b: torch.nn.Module) -> None:
        with torch.no_grad():
            b(x)

    def train(b: torch.nn.Module) -> None:
        xg.grad = None
        b(xg).backward(grad)

    variants = {"kernel": fast, "pytorch": plain, "eq. 1 written out": written_out}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.patches} patches x 16 x 12, "
          f"{args.rounds} rounds; library {accel.library_path()}")
    for mode, fn in (("infer", infer), ("train", train)):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds + 2):
            for name, block in variants.items():
                start = time.perf_counter()
                fn(block)
                if r >= 2:  # two warm-up rounds
                    times[name].append((time.perf_counter() - start) * 1e3)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"\n{mode}: median ms (min-max)")
        for name, t in times.items():
            print(f"  {name:18s} {med[name]:7.2f}  ({min(t):.2f}-{max(t):.2f})  "
                  f"kernel speed-up {med[name] / med['kernel']:.2f}x")
    (g_fast,) = torch.autograd.grad(out_fast := fast(xg), xg, grad)
    (g_plain,) = torch.autograd.grad(out_plain := plain(xg), xg, grad)
    print(f"\nlargest difference from PyTorch: output {(out_fast - out_plain).abs().max().item():.2e}, "
          f"input gradient {(g_fast - g_plain).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
