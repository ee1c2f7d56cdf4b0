#!/usr/bin/env python
"""TITN of this checkout against TITN of an older git revision (and timm's TNT), in one process.

    python benchmarks/compare_revisions.py --rev 171a008 [--threads 1] [--batch 128] [--rounds 7]

The old ``titn_edu`` package is extracted with ``git archive`` into a temporary folder and imported
under another name; both models get the same weights (the old state dict must load into the new
model, which also checks that the parameter layout did not change). Training steps (forward, loss,
backward; no optimiser) and inference batches of the three models are interleaved round by round.
With one thread the times are CPU time of this thread (``time.thread_time``), so other programs
on the machine disturb them little; with more threads, wall-clock time.
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import titn_edu  # noqa: E402
from titn_edu.bench import build_timm_tnt  # noqa: E402


def import_revision(rev: str, folder: Path):
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "titn_edu"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (folder / "titn_edu").rename(folder / "titn_edu_old")
    sys.path.insert(0, str(folder))
    return importlib.import_module("titn_edu_old")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="git revision of the older TITN")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = import_revision(args.rev, Path(tmp))
        torch.manual_seed(0)
        new = titn_edu.build_model("titn", num_classes=100)
        old = old_pkg.build_model("titn", num_classes=100)
        new.load_state_dict(old.state_dict())
        models = {"titn (this checkout)": new, f"titn ({args.rev})": old, "timm-tnt": build_timm_tnt(new.config)}
        images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 100, (args.batch,))

        def train(model):
            model.train()
            out = model(images)
            outs = out if isinstance(out, tuple) else (out,)
            sum(F.cross_entropy(o, labels) for o in outs).backward()
            model.zero_grad(set_to_none=True)

        def infer(model):
            model.eval()
            with torch.inference_mode():
                model(images)

        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
              f"{args.rounds} rounds, {'thread CPU time' if args.threads == 1 else 'wall time'} in ms per step")
        for mode, fn in [("train", train), ("infer", infer)]:
            times = {name: [] for name in models}
            for r in range(args.rounds + 1):  # round 0 warms up
                names = list(models) if r % 2 == 0 else list(models)[::-1]
                for name in names:
                    start = clock()
                    fn(models[name])
                    if r:
                        times[name].append((clock() - start) * 1e3)
            med = {name: statistics.median(v) for name, v in times.items()}
            print(f"\n{mode}")
            for name, v in times.items():
                print(f"  {name:<24} min {min(v):8.1f}  median {med[name]:8.1f}")
            new_name, old_name = list(models)[:2]
            print(f"  speed-up of this checkout over {args.rev}: {med[old_name] / med[new_name]:.3f}x (medians)")
            for name in (new_name, old_name):
                paired = sorted(t / n for t, n in zip(times["timm-tnt"], times[name]))
                print(f"  {name} vs timm-tnt, per round: min {paired[0]:.3f}x  median "
                      f"{statistics.median(paired):.3f}x  max {paired[-1]:.3f}x")


if __name__ == "__main__":
    main()
