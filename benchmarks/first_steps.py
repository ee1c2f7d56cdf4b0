#!/usr/bin/env python
"""The first training steps of a fresh process: what a student's run pays before it reaches full speed.

    python benchmarks/first_steps.py [--steps 4] [--batch 128] [--threads 2] [--accelerate]

Run it in a fresh process, with an empty cache folder to see a first run on a machine
(``TITN_EDU_CACHE_DIR=$(mktemp -d)``). It times, from the start of the process: ``import
titn_edu``, building ``build_model("titn", num_classes=10)``, ``titn_edu.accel.accelerate`` when
asked (which builds the compiled kernel the first time on a machine), and each of the first
``--steps`` training steps (forward, cross-entropy on both heads, backward, AdamW) on random
CIFAR-sized images, in images per second. Prints one JSON object.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--accelerate", action="store_true", help="titn_edu.accel.accelerate(model) before training")
    args = p.parse_args()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import titn_edu

    out = {"import_s": round(time.perf_counter() - t0, 3)}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = titn_edu.build_model("titn", num_classes=10).train()
    out["build_s"] = round(time.perf_counter() - t0, 3)
    if args.accelerate:
        t0 = time.perf_counter()
        from titn_edu import accel

        accel.accelerate(model)
        out["accelerate_s"] = round(time.perf_counter() - t0, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    rates = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        cls, dist = model(images)
        loss = F.cross_entropy(cls, labels) + F.cross_entropy(dist, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rates.append(round(args.batch / (time.perf_counter() - t0), 1))
    out.update(images_per_s=rates, first_step_s=round(args.batch / rates[0], 3),
               process_to_first_step_end_s=round(time.perf_counter() - START - sum(args.batch / r for r in rates[1:]), 3),
               torch=torch.__version__, threads=torch.get_num_threads(), accelerate=args.accelerate)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
