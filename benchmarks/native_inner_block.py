#!/usr/bin/env python
"""One inner (pixel) transformer block on CPU: the fused C++ kernel against PyTorch's operators.

    python benchmarks/native_inner_block.py [--patches 2048] [--threads 1] [--rounds 15]

Times ``TransformerBlock(dim=12, num_heads=2)`` on ``(patches, 16, 12)`` pixel tokens (2,048 =
batch 128 × 16 patches), inference (forward, no gradients) and training (forward + backward),
three ways alternated round by round in one process: the kernel (:mod:`titn_edu.native`), the
PyTorch fast path without it (``titn_edu.native.enabled = False``) and the reference path
(``set_fast_path(block, False)``). Prints medians in ms and the speed-ups, and the largest
difference of the kernel's outputs and input gradients from the reference's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from titn_edu import TransformerBlock, native, set_fast_path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not native.available():
        sys.exit("the kernel is not available here (see the warning above); nothing to compare")
    torch.manual_seed(0)
    block = TransformerBlock(dim=12, num_heads=2)
    ref = TransformerBlock(dim=12, num_heads=2)
    ref.load_state_dict(block.state_dict())
    set_fast_path(ref, False)
    x = torch.randn(args.patches, 16, 12)
    xg = x.clone().requires_grad_()
    grad = torch.randn_like(x)

    def infer(b: torch.nn.Module):
        with torch.no_grad():
            b(x)

    def train(b: torch.nn.Module):
        xg.grad = None
        b(xg).backward(grad)

    variants = {
        "kernel": (block, True),
        "pytorch fast path": (block, False),
        "reference": (ref, True),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.patches} patches x 16 x 12, "
          f"{args.rounds} rounds; library {native.library_path()}")
    for mode, fn in (("infer", infer), ("train", train)):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds + 2):
            for name, (b, on) in variants.items():
                native.enabled = on
                start = time.perf_counter()
                fn(b)
                if r >= 2:  # two warm-up rounds (kernel choices, first build)
                    times[name].append((time.perf_counter() - start) * 1e3)
        native.enabled = True
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"\n{mode}: median ms (min-max)")
        for name, t in times.items():
            print(f"  {name:18s} {med[name]:7.2f}  ({min(t):.2f}-{max(t):.2f})  "
                  f"kernel speed-up {med[name] / med['kernel']:.2f}x")
    out_k = block(xg)
    (gk,) = torch.autograd.grad(out_k, xg, grad)
    out_r = ref(xg)
    (gr,) = torch.autograd.grad(out_r, xg, grad)
    print(f"\nlargest difference from the reference: output {(out_k - out_r).abs().max().item():.2e}, "
          f"input gradient {(gk - gr).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
