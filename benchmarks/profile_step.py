#!/usr/bin/env python
"""Where the time of one training step (or inference batch) goes: torch.profiler, TITN and timm's TNT.

    python benchmarks/profile_step.py [--mode train|infer] [--batch 64] [--threads 1] [--steps 3]

Prints, per model, the share of self CPU time by kind of operation and the number of operator
calls that do work (one profiled run of ``--steps`` steps after a warm-up step each). The profiler
times are wall-clock per operator; run with one thread on a quiet machine for stable shares.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from titn_edu import build_model  # noqa: E402
from titn_edu.bench import _make_step, build_timm_tnt  # noqa: E402

KINDS = {
    "matmul (Linear)": ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"),
    "attention": ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data", "scaled_dot_product"),
    "layer norm": ("layer_norm",),
    "GELU": ("gelu",),
    "copies, cat, pad": ("aten::copy_", "aten::cat", "aten::constant_pad_nd", "aten::clone", "aten::fill_",
                         "aten::zero_", "aten::im2col", "aten::col2im", "aten::repeat"),
    "elementwise, sums": ("aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::sum", "aten::div",
                          "aten::sub"),
    "convolution": ("convolution",),
    "optimizer": ("_fused_adamw", "adam"),
}


def kind_of(name: str) -> str | None:
    for kind, keys in KINDS.items():
        if any(k in name for k in keys):
            return kind
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    titn = build_model("titn", num_classes=100)
    models = {"titn": titn, "timm-tnt": build_timm_tnt(titn.config)}
    images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 100, (args.batch,))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, mode {args.mode}, "
          f"{args.steps} profiled steps")
    for name, model in models.items():
        step = _make_step(model, args.mode, images, labels, amp=False, compile=False)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        by_kind: dict[str, float] = collections.Counter()
        calls: dict[str, int] = collections.Counter()
        for event in prof.key_averages():
            kind = kind_of(event.key)
            if kind is not None:
                by_kind[kind] += event.self_cpu_time_total
                calls[kind] += event.count
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{name}: {total / 1e3 / args.steps:.0f} ms per step (profiled), "
              f"{sum(calls.values()) // args.steps} working operator calls per step")
        for kind in KINDS:
            if calls[kind]:
                print(f"  {kind:<18} {by_kind[kind] / total:6.1%}  {calls[kind] // args.steps:5d} calls")
        rest = total - sum(by_kind.values())
        print(f"  {'other (views, dispatch)':<18} {rest / total:6.1%}")


if __name__ == "__main__":
    main()
