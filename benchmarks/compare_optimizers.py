"""Side by side: the paper's SGD preset against the AdamW + warm-up preset, same budget and seeds.

Both presets of :func:`titn_edu.fit` train the same student on the same MNIST subset, for the same
number of epochs, with the same batch size and seeds (no teacher, no CutMix: the optimiser is the
only difference), then report MNIST test top-1 (all 10,000 test images).

* ``paper``: SGD, momentum 0.9, weight decay 1e-4, lr 0.1, cosine annealing, no warm-up (§4.1);
* ``adamw``: AdamW, lr 1e-3, weight decay 0.05 (not on norms/biases/tokens), linear warm-up over
  10 % of the run, then cosine.

Usage (CPU, a few minutes)::

    python benchmarks/compare_optimizers.py --limit 10000 --epochs 3 --seeds 0 1 --out benchmarks/results/compare_optimizers_mnist.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import titn_edu
from titn_edu.cli import _auto_threads, _preload
from titn_edu.data import get_dataset, get_transforms
from titn_edu.presets import PRESETS
from titn_edu.utils import save_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10000, help="training images (class-balanced subset)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="the same for both presets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--model", default="mnist-quick",
                        help="'mnist-quick' (the CPU preset's student) or a build_model name")
    parser.add_argument("--threads", type=int, default=None, help="default: the idle cores")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or _auto_threads())

    tf = get_transforms("mnist", train=False)
    train = _preload(get_dataset("mnist", train=True, transform="raw", limit=args.limit, seed=0), tf)
    test = _preload(get_dataset("mnist", train=False, transform="raw"), tf)
    if args.model == "mnist-quick":
        name, overrides = PRESETS["mnist-quick"]["model"], PRESETS["mnist-quick"]["model_args"]
    else:
        name, overrides = args.model, {}

    rows = []
    for seed in args.seeds:
        for preset in ("paper", "adamw"):
            titn_edu.seed_everything(seed)
            model = titn_edu.build_model(name, num_classes=10, in_chans=1, **overrides)
            start = time.perf_counter()
            history = titn_edu.fit(model, train, epochs=args.epochs, optimizer=preset, batch_size=args.batch_size,
                                   mixing=None, progress=False, device="cpu", seed=seed)
            seconds = time.perf_counter() - start
            result = titn_edu.evaluate(model, test, device="cpu")
            rows.append(dict(preset=preset, seed=seed, status=history.status, test_top1=result["top1"],
                             test_top5=result["top5"], final_train_loss=history[-1]["train_loss"] if history else None,
                             train_seconds=seconds))
            print(f"seed {seed} {preset:6s} test top-1 {result['top1']:6.2f} %  "
                  f"train loss {rows[-1]['final_train_loss']:.4f}  {seconds:.0f} s  ({history.status})", flush=True)

    summary = {}
    for preset in ("paper", "adamw"):
        tops = [r["test_top1"] for r in rows if r["preset"] == preset]
        summary[preset] = {"mean_top1": statistics.mean(tops), "runs": tops}
    diff = summary["adamw"]["mean_top1"] - summary["paper"]["mean_top1"]
    print(f"mean test top-1: paper (SGD) {summary['paper']['mean_top1']:.2f} %, adamw {summary['adamw']['mean_top1']:.2f} % "
          f"(adamw - paper = {diff:+.2f} points)")
    if args.out:
        save_json(args.out, {"settings": vars(args), "model": name, "model_overrides": overrides,
                             "threads": torch.get_num_threads(), "runs": rows, "summary": summary,
                             "adamw_minus_paper_points": diff})


if __name__ == "__main__":
    main()
