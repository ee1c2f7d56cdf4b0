"""The accuracy-versus-minutes table of recorded ``titn-edu train`` runs, from their metrics.json.

    python scripts/accuracy_vs_time.py benchmarks/results/cifar10_quick_seed0.json --at 5 10 20 30

prints, for each time mark, the test top-1 of the last epoch finished by then (teacher epochs
first, then student epochs; ``--track-test`` runs record the test accuracy after every epoch), and
one row per file with its end point. Every figure comes from the files; nothing is typed in.

    python scripts/accuracy_vs_time.py benchmarks/results/titn_cifar10_stage4_cutmix_seed0.json --epochs 8 16 24 32

reads the first file by student epoch instead (test top-1 and the epoch's own seconds), for a run
whose clock is not its training time (one paused while the machine did something else).
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


def by_minutes(record: dict, name: str, marks: list[float]) -> list[str]:
    """The table of test top-1 at each time mark (on the run's ``clock``)."""
    if clock(record) == "minutes":
        lines = [f"Accuracy versus wall-clock minutes, {name}:", "", "| minutes | stage, epoch | test top-1 |"]
    else:
        lines = [f"Accuracy versus training minutes (the epochs' own times added up: the run was resumed), {name}:",
                 "", "| training minutes | stage, epoch | test top-1 |"]
    lines.append("|---|---|---|")
    for mark in marks:
        row = at_minutes(record, mark)
        acc = f"{row['test_top1']:.2f} %" if row is not None and row.get("test_top1") is not None else "–"
        lines.append(f"| {mark:g} | – | – |" if row is None else f"| {mark:g} | {row['stage']} {row['epoch']} | {acc} |")
    return lines


def by_epoch(record: dict, name: str, epochs: list[int]) -> list[str]:
    """The table of test top-1 after each student epoch, with the epoch's own seconds."""
    lines = [f"Accuracy by student epoch, {name}:", "", "| student epoch | test top-1 | seconds of the epoch |",
             "|---|---|---|"]
    recorded = {e["epoch"]: e for e in (record.get("history") or {}).get("epochs", [])}
    for k in epochs:
        e = recorded.get(k)
        acc = f"{e['test_top1']:.2f} %" if e is not None and e.get("test_top1") is not None else "–"
        lines.append(f"| {k} | {acc} | {'–' if e is None else round(e['seconds'])} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="metrics.json files of completed runs")
    parser.add_argument("--at", nargs="+", type=float, default=[5, 10, 20, 30], help="time marks in minutes")
    parser.add_argument("--epochs", nargs="+", type=int, help="student epochs to read instead of time marks")
    args = parser.parse_args(argv)
    records = [(Path(f), json.loads(Path(f).read_text())) for f in args.files]
    first_path, first = records[0]
    print("\n".join(by_epoch(first, first_path.name, args.epochs) if args.epochs else
                    by_minutes(first, first_path.name, args.at)))
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
