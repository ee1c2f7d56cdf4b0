"""Reproduce the paper on CIFAR-10 (Table 4): the VGG16-BN teacher, then TITN distilled from it.

The run goes in resumable slices, so it fits machines whose commands are time-limited: each call trains
for at most ``--budget`` seconds, then stops (checkpoints are written atomically after every epoch);
the next call resumes where it stopped. When the run is complete, ``--record`` writes the run records
to ``results/`` (teacher and student), from which the README's reproduction table is generated.

    python scripts/reproduce_cifar10.py --output runs/c10 --budget 540 -- --device cuda --compile
    # ... repeat until it prints "complete" ...
    python scripts/reproduce_cifar10.py --output runs/c10 --record --device-name "1x H100 80GB"
    python scripts/reproduction_table.py --write

A CPU smoke run of the very same path at a tiny budget (a few minutes on a laptop):

    python scripts/reproduce_cifar10.py --output runs/c10-smoke --tiny --record --results runs/c10-smoke/results

Arguments after ``--`` go to ``titn-edu train`` unchanged (they override the preset).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from titn_edu.results import PAPER

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SIZE = {"mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}

#: Overrides of the smoke run: the same preset and code path, at a budget a CPU finishes in minutes.
TINY = ["--model", "titn-tiny", "--teacher", "cnn-small", "--epochs", "2", "--teacher-epochs", "1",
        "--limit", "1000", "--test-limit", "500", "--val-size", "200", "--batch-size", "128", "--device", "cpu"]


def _status(out: Path) -> str | None:
    path = out / "metrics.json"
    return json.loads(path.read_text()).get("status") if path.is_file() else None


def train_slice(out: Path, preset: str, extra: list[str], budget: float) -> str:
    """Run ``titn-edu train`` for at most ``budget`` seconds, resuming when the folder holds a run."""
    cmd = [sys.executable, "-m", "titn_edu", "train", "--preset", preset, "--output", str(out), *extra]
    if _status(out) is not None:
        cmd += ["--resume", str(out)]
    print("$", shlex.join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True, timeout=budget)
    except subprocess.TimeoutExpired:
        print(f"paused after {budget:.0f} s: run the same command again to resume", flush=True)
        return "paused"
    return _status(out) or "unknown"


def seconds_to_target(metrics: dict, target: float) -> float | None:
    """Teacher training time plus the student's training time until its validation top-1 first reaches ``target``."""
    elapsed = float(metrics.get("teacher_train_seconds") or 0.0)
    for epoch in metrics["history"]["epochs"]:
        elapsed += epoch["seconds"]
        if epoch.get("val_top1") is not None and epoch["val_top1"] >= target:
            return elapsed
    return None


def record(out: Path, results: Path, device_name: str, command: str) -> list[Path]:
    """Write ``results/cifar10-<teacher>-teacher.json`` and ``results/cifar10-<model>-student.json``."""
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        raise SystemExit(f"{out} is not a completed run (status {metrics.get('status')!r}); finish it first.")
    config = metrics["config"]
    dataset, student, teacher = config["dataset"], config["model"], config["teacher"]
    paper_top1 = PAPER[dataset]["titn"][0]
    epochs = metrics["history"]["epochs"]
    # training images per epoch: the --limit, else the training split less the held-out validation images
    train_size = config.get("limit") or (TRAIN_SIZE[dataset] - (config.get("val_size") or 0))
    images, seconds = train_size * len(epochs), sum(e["seconds"] for e in epochs)
    common = dict(dataset=dataset, device=device_name, command=command, preset=config.get("preset"))
    rows = {
        f"{dataset}-{teacher}-teacher.json": dict(
            common, role="teacher", model=teacher, **{k: metrics["teacher"][k] for k in
                                                      ("test_top1", "test_top5", "precision", "recall", "f1", "params", "gflops")},
            wall_seconds=metrics.get("teacher_train_seconds"), epochs=len(metrics["teacher_history"]["epochs"])),
        f"{dataset}-{student}-student.json": dict(
            common, role="student", model=student, paper_model="titn",
            **{k: metrics[k] for k in ("test_top1", "test_top5", "precision", "recall", "f1", "params", "gflops")},
            wall_seconds=metrics["wall_seconds"], epochs=len(epochs),
            seconds_to_paper_top1=seconds_to_target(metrics, paper_top1),
            train_images_per_second=(images / seconds) if images and seconds else None),
    }
    results.mkdir(parents=True, exist_ok=True)
    written = []
    for name, row in rows.items():
        path = results / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        written.append(path)
        print("recorded", path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="run folder (resumed when it holds a run)")
    parser.add_argument("--preset", default="paper-cifar10")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds of training per call (default 540)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run of the same path at a tiny budget")
    parser.add_argument("--record", action="store_true", help="write run records once the run is complete")
    parser.add_argument("--results", default=str(ROOT / "results"), help="where run records go")
    parser.add_argument("--device-name", default="CPU", help="device named in the run records")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be positive; got {args.budget}")
    out = Path(args.output)
    extra = (TINY if args.tiny else []) + extra
    start = time.perf_counter()
    status = _status(out)
    if status != "completed":
        status = train_slice(out, args.preset, extra, args.budget)
    print(f"status: {status} ({time.perf_counter() - start:.0f} s this call)")
    if status == "completed" and args.record:
        command = shlex.join(["python", "scripts/reproduce_cifar10.py", "--preset", args.preset,
                              *(["--tiny"] if args.tiny else []), *(["--", *extra] if extra and not args.tiny else [])])
        record(out, Path(args.results), args.device_name, command)
    return 0 if status in ("completed", "paused") else 1


if __name__ == "__main__":
    sys.exit(main())
