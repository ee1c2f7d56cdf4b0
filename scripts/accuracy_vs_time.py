"""The accuracy-versus-minutes table of recorded ``titn-edu train`` runs, from their metrics.json.

    python scripts/accuracy_vs_time.py benchmarks/results/cifar10_quick_seed0.json --at 5 10 20 30

prints, for each time mark, the test top-1 of the last epoch finished by then (teacher epochs
first, then student epochs; ``--track-test`` runs record the test accuracy after every epoch), and
one row per file with its end point. Every figure comes from the files; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def clock(record: dict) -> str:
    """Which minutes a run's timeline can be read in: wall-clock minutes since its command started, or, for a
    run resumed in slices (its earlier slices' epochs have no wall-clock time), its epochs' own times added up."""
    timeline = record.get("timeline", [])
    return "minutes" if timeline and all(r.get("minutes") is not None for r in timeline) else "train_minutes"


def at_minutes(record: dict, minutes: float) -> dict | None:
    """The last epoch of the run's timeline finished within ``minutes`` (on the run's ``clock``)."""
    key = clock(record)
    done = [r for r in record.get("timeline", []) if r.get(key) is not None and r[key] <= minutes]
    return done[-1] if done else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="metrics.json files of completed runs")
    parser.add_argument("--at", nargs="+", type=float, default=[5, 10, 20, 30], help="time marks in minutes")
    args = parser.parse_args(argv)
    records = [(Path(f), json.loads(Path(f).read_text())) for f in args.files]
    first_path, first = records[0]
    if clock(first) == "minutes":
        print(f"Accuracy versus wall-clock minutes, {first_path.name}:\n")
        print("| minutes | stage, epoch | test top-1 |")
    else:
        print(f"Accuracy versus training minutes (the epochs' own times added up: the run was resumed), "
              f"{first_path.name}:\n")
        print("| training minutes | stage, epoch | test top-1 |")
    print("|---|---|---|")
    for mark in args.at:
        row = at_minutes(first, mark)
        if row is None:
            print(f"| {mark:g} | – | – |")
        else:
            acc = f"{row['test_top1']:.2f} %" if row.get("test_top1") is not None else "–"
            print(f"| {mark:g} | {row['stage']} {row['epoch']} | {acc} |")
    print("\nEnd points:\n")
    print("| file | seed | teacher top-1 | student epochs | student top-1 / top-5 | macro F1 | seconds per student "
          "epoch | wall minutes | CPU, threads, load at start |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, r in records:
        machine = r.get("machine") or {}
        teacher = (r.get("teacher") or {}).get("test_top1")
        epochs = (r.get("history") or {}).get("epochs", [])
        per_epoch = sum(e["seconds"] for e in epochs) / len(epochs) if epochs else float("nan")
        load = machine.get("load_1min_at_start")
        wall = (f"{r['wall_seconds'] / 60:.1f}" if clock(r) == "minutes"   # a resumed run: its epochs' times
                else f"{sum(e['seconds'] for e in epochs) / 60:.1f} (epochs only, resumed)")
        print(f"| `{path.name}` | {r['config']['seed']} | {teacher:.2f} % | {len(epochs)} | {r['test_top1']:.2f} % / "
              f"{r['test_top5']:.2f} % | {r['f1']:.4f} | {per_epoch:.1f} | {wall} | "
              f"{machine.get('cpu', '?')}, {r['config'].get('threads')}, {'?' if load is None else f'{load:.2f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
