"""Training images per second of candidate students and teachers for a CPU recipe (``cifar10-quick``).

    python benchmarks/recipe_throughput.py [--batch-size 128] [--threads 2] [--steps 5]

A CPU budget is spent in images: what a model learns per image is measured by training it (the
recorded runs), what an image costs is measured here. Each candidate trains on random 32×32 CIFAR-
sized batches (AdamW, both heads' loss for a TITN); the median of ``--steps`` timed steps after two
warm-up steps is reported with parameters and GFLOPs per image. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from titn_edu import build_model, build_teacher, count_parameters
from titn_edu.metrics import count_flops

_TITN = dict(outer_dim=192, inner_dim=12, depth=6, outer_heads=3, inner_heads=2, mlp_ratio=2.0)
CANDIDATES = {
    "titn p8/px2 d192/12 depth 6 (cifar10-quick)": ("titn", dict(_TITN, patch_size=8, pixel_size=2)),
    "titn p8/px2 d192/12 depth 4": ("titn", dict(_TITN, patch_size=8, pixel_size=2, depth=4)),
    "titn p8/px2 d192/24 depth 6": ("titn", dict(_TITN, patch_size=8, pixel_size=2, inner_dim=24)),
    "titn p8/px2 d192/12 depth 6, MLP ratio 4": ("titn", dict(_TITN, patch_size=8, pixel_size=2, mlp_ratio=4.0)),
    "titn p8/px4 d192/24 depth 6": ("titn", dict(_TITN, patch_size=8, pixel_size=4, inner_dim=24)),
    "titn p4/px1 d96/12 depth 6": ("titn", dict(_TITN, patch_size=4, pixel_size=1, outer_dim=96)),
    "titn p4/px2 d128/16 depth 6": ("titn", dict(_TITN, patch_size=4, pixel_size=2, outer_dim=128, inner_dim=16,
                                                 outer_heads=2)),
    "deit p8 d192 depth 6 (no inner stream)": ("titn", dict(_TITN, patch_size=8, inner=False)),
    "resnet9 width 16 (cifar10-quick teacher)": ("teacher", dict(width=16)),
    "resnet9 width 24": ("teacher", dict(width=24)),
    "resnet9 width 32": ("teacher", dict(width=32)),
}


def train_rate(model: torch.nn.Module, batch_size: int, steps: int) -> float:
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        out = model(x)
        loss = sum(F.cross_entropy(o, y) for o in out) if isinstance(out, tuple) else F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times[2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(f"batch {args.batch_size}, {torch.get_num_threads()} thread(s)\n")
    print("| model | parameters | GFLOPs / image | training images / s | seconds per CIFAR-10 epoch |")
    print("|---|---|---|---|---|")
    for name, (kind, kwargs) in CANDIDATES.items():
        model = (build_model("titn", num_classes=10, **kwargs) if kind == "titn"
                 else build_teacher("resnet9", num_classes=10, **kwargs))
        rate = train_rate(model, args.batch_size, args.steps)
        row = {"model": name, "params": count_parameters(model), "gflops": count_flops(model.eval(), (3, 32, 32)),
               "train_images_per_s": rate}
        rows.append(row)
        print(f"| {name} | {row['params']:,} | {row['gflops']:.4f} | {rate:.0f} | {50_000 / rate:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch_size": args.batch_size, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
