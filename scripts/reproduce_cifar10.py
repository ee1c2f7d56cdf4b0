"""Reproduce the paper on CIFAR-10 (Table 4): a teacher, then TITN distilled from it, timed to the paper's top-1.

The run goes in resumable slices, so it fits machines whose commands are time-limited: each call trains
for at most ``--budget`` seconds (``titn-edu train --time-limit`` stops it after the last epoch that fits
the budget less a margin; checkpoints are written atomically), and the next call resumes where it stopped.
When the run is complete, ``--record`` writes the run records to ``results/`` (teacher and student), from
which the README's reproduction table is generated.

    # the timed GPU run (docs/gpu.md; scripts/gpu_run.sh runs it): epochs sized by scripts/gpu_smoke.py
    python scripts/reproduce_cifar10.py --preset gpu-cifar10 --output runs/gpu/c10 --budget 400 \\
        --sizing runs/gpu/sizing.json --record -- --compile
    # the paper's own settings (VGG16-BN, 600 epochs: hours), in slices
    python scripts/reproduce_cifar10.py --output runs/c10 --budget 540 -- --device cuda --compile
    python scripts/reproduction_table.py --write

A CPU smoke run of the very same path at a tiny budget (a few minutes on a laptop):

    python scripts/reproduce_cifar10.py --output runs/c10-smoke --tiny --record --results runs/c10-smoke/results

Arguments after ``--`` go to ``titn-edu train`` unchanged (they override the preset and ``--sizing``).

**Time to accuracy.** Every call notes in ``OUTPUT/slices.json`` when it started (before Python starts
``titn-edu``) and ended. The student's record holds ``seconds_to_target``: wall-clock seconds from the
start of the first slice to the end of the first student epoch whose test top-1 reaches ``--target``
(default: the paper's TITN top-1, 92.03 % on CIFAR-10), the pauses between slices left out; everything
is inside: start-up, data loading, the teacher, compilation, evaluations, checkpoints. The test set is
scored after every epoch only with ``--track-test`` (on in the GPU preset); it never picks a checkpoint.
``train_seconds_to_target`` adds up the epochs alone (teacher and student, evaluations included).
Also recorded: training images per second (training steps only) and MFU, the model FLOPs of training
(3 × the forward pass per image) per second over the device's dense bf16 peak
(``titn_edu.bench.PEAK_TFLOPS``); ``mfu_with_teacher`` counts the teacher's forward pass too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from titn_edu.bench import PEAK_TFLOPS  # noqa: E402
from titn_edu.results import PAPER, record_result  # noqa: E402
from titn_edu.utils import save_json  # noqa: E402

#: Overrides of the smoke run: the same preset and code path, at a budget a CPU finishes in minutes.
TINY = ["--model", "titn-tiny", "--teacher", "cnn-small", "--epochs", "2", "--teacher-epochs", "1",
        "--limit", "1000", "--test-limit", "500", "--val-size", "200", "--batch-size", "128", "--device", "cpu"]
#: Exit code of ``titn-edu train`` stopped by ``--time-limit`` (titn_edu.cli.EXIT_SLICE).
EXIT_SLICE = 75


def _status(out: Path) -> str | None:
    path = out / "metrics.json"
    return json.loads(path.read_text()).get("status") if path.is_file() else None


def _slices(out: Path) -> list[dict[str, Any]]:
    path = out / "slices.json"
    return json.loads(path.read_text()) if path.is_file() else []


def time_limit(budget: float) -> float:
    """Seconds ``titn-edu train`` may train in a slice of ``budget`` seconds: a margin is left for Python's
    start, an epoch longer than the one before, the final scores and the exit (a tenth of the budget,
    between 5 and 60 seconds)."""
    return max(budget - min(60.0, max(5.0, 0.1 * budget)), 0.5 * budget)


def train_slice(out: Path, preset: str, extra: list[str], budget: float) -> str:
    """Run ``titn-edu train`` for at most ``budget`` seconds, resuming when the folder holds a run.

    Returns ``"completed"``, ``"paused"`` (stopped by the budget: run again to resume) or the run's status."""
    cmd = [sys.executable, "-m", "titn_edu", "train", "--preset", preset, "--output", str(out), *extra]
    if _status(out) is not None:
        cmd += ["--resume", str(out)]
    cmd += ["--time-limit", f"{time_limit(budget) / 60:.4f}"]
    print("$", shlex.join(cmd), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        code = subprocess.run(cmd, timeout=budget, env=env).returncode  # this checkout's titn_edu
        status = "paused" if code == EXIT_SLICE else (_status(out) or "unknown") if code == 0 else f"failed ({code})"
    except subprocess.TimeoutExpired:  # killed at the budget: paused, unless it had just finished
        status = "completed" if _status(out) == "completed" else "paused"
    save_json(out / "slices.json", _slices(out) + [{"start": start, "end": time.time(), "status": status}])
    if status == "paused":
        print(f"paused after {time.time() - start:.0f} s: run the same command again to resume", flush=True)
    return status


# ----------------------------------------------------------------------------- time to accuracy, speed
def seconds_to_target(metrics: dict, target: float, slices: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """``(wall, epochs)`` seconds until the first student epoch with test top-1 >= ``target`` (module docstring).

    ``wall`` is ``None`` when no slice contains that epoch's end; both are ``None`` when no epoch reached it."""
    epoch_sum = sum(e["seconds"] for e in (metrics.get("teacher_history") or {}).get("epochs", []))
    for epoch in metrics["history"]["epochs"]:
        epoch_sum += epoch["seconds"]
        if epoch.get("test_top1") is not None and epoch["test_top1"] >= target:
            done, before = epoch.get("finished_at"), 0.0
            for part in sorted(slices, key=lambda p: p["start"]):
                if done is not None and part["start"] <= done <= part["end"]:
                    return before + done - part["start"], epoch_sum
                before += part["end"] - part["start"]
            return None, epoch_sum
    return None, None


def speed(history: list[dict], gflops: float, teacher_gflops: float | None, device: str) -> dict[str, Any]:
    """Training images per second (steps only) and MFU against the device's peak (``None`` where unknown)."""
    images = sum(e.get("train_images") or 0 for e in history)
    seconds = sum(e.get("train_seconds") or 0.0 for e in history)
    per_second = images / seconds if images and seconds else None
    peak = next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device.lower()), None)
    flops = 3 * gflops * 1e9  # forward + backward (twice the forward) per trained image
    row: dict[str, Any] = {"train_images_per_second": per_second, "flops_per_train_image": flops,
                           "peak_tflops": peak, "mfu": None, "mfu_with_teacher": None}
    if per_second and peak:
        row["mfu"] = flops * per_second / (peak * 1e12)
        row["mfu_with_teacher"] = (flops + (teacher_gflops or 0.0) * 1e9) * per_second / (peak * 1e12)
    return row


# ----------------------------------------------------------------------------- run records
def _device(metrics: dict, given: str) -> str:
    machine = metrics.get("machine") or {}
    return given if given != "auto" else (machine.get("cuda") or f"CPU: {machine.get('cpu', 'unknown')}")


def record(out: Path, results: Path, device_name: str, command: str, target: float | None = None) -> list[Path]:
    """Write ``results/<preset>-<teacher>-teacher.json`` and ``results/<preset>-<model>-student.json``
    (:func:`titn_edu.results.record_result`): the run's metrics with time to ``target``, speed, device, command."""
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        raise SystemExit(f"{out} is not a completed run (status {metrics.get('status')!r}); finish it first.")
    config, device = metrics["config"], _device(metrics, device_name)
    dataset, student, teacher = config["dataset"], config["model"], config["teacher"]
    paper_top1 = PAPER[dataset]["titn"][0]
    target = paper_top1 if target is None else target
    wall, epochs_only = seconds_to_target(metrics, target, _slices(out))
    common = dict(dataset=dataset, device=device, command=command, preset=config.get("preset"))
    name = config.get("preset") or dataset
    written = []
    if metrics.get("teacher_history"):  # a teacher trained in this run
        teacher_file = save_json(out / "teacher_metrics.json", dict(
            metrics["teacher"], config=config, history=metrics["teacher_history"],
            wall_seconds=sum(e["seconds"] for e in metrics["teacher_history"]["epochs"])))
        written.append(record_result(
            teacher_file, results / f"{name}-{teacher}-teacher.json", role="teacher", model=teacher,
            epochs=len(metrics["teacher_history"]["epochs"]), **common,
            **speed(metrics["teacher_history"]["epochs"], metrics["teacher"]["gflops"], None, device)))
    epochs = metrics["history"]["epochs"]
    teacher_gflops = (metrics.get("teacher") or {}).get("gflops")
    written.append(record_result(
        out / "metrics.json", results / f"{name}-{student}-student.json", role="student", model=student,
        paper_model="titn", epochs=len(epochs), target_top1=target, seconds_to_target=wall,
        train_seconds_to_target=epochs_only, seconds_to_paper_top1=wall if target == paper_top1 else None,
        slices=_slices(out), **_total_wall(metrics, _slices(out)), **common,
        **speed(epochs, metrics["gflops"], teacher_gflops, device)))
    for path in written:
        print("recorded", path)
    return written


def _total_wall(metrics: dict, slices: list[dict[str, Any]]) -> dict[str, float]:
    """``wall_seconds`` of the whole run: its slices added up (metrics.json holds the last slice's alone)."""
    return {"wall_seconds": sum(p["end"] - p["start"] for p in slices)} if slices else {}


def _sizing_flags(path: str | None, budget: float) -> list[str]:
    """``--teacher-epochs T --epochs E`` that fit this slice's time limit, from the step times that
    scripts/gpu_smoke.py measured (its ``--sizing FILE``); none if the file is missing."""
    if path is None:
        return []
    if not Path(path).is_file():
        print(f"no sizing file {path}: the preset's epochs are used", flush=True)
        return []
    from gpu_smoke import size_run  # beside this script

    measured = json.loads(Path(path).read_text())
    sizing = size_run(measured["measured"], budget=time_limit(budget), settings=measured["settings"],
                      train_images=measured["train_images"])
    print(f"sizing from the step times in {path}: teacher {sizing['teacher_epochs']} epochs, student "
          f"{sizing['epochs']} epochs, expected {sizing['expected_seconds']:.0f} s of {sizing['budget_seconds']:.0f}",
          flush=True)
    return ["--teacher-epochs", str(sizing["teacher_epochs"]), "--epochs", str(sizing["epochs"])]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="run folder (resumed when it holds a run)")
    parser.add_argument("--preset", default="paper-cifar10")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds of training per call (default 540)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run of the same path at a tiny budget")
    parser.add_argument("--sizing", help="epochs from scripts/gpu_smoke.py --sizing FILE (when the file exists)")
    parser.add_argument("--target", type=float, help="test top-1 (%%) to time (default: the paper's TITN top-1)")
    parser.add_argument("--record", action="store_true", help="write run records once the run is complete")
    parser.add_argument("--results", default=str(ROOT / "results"), help="where run records go")
    parser.add_argument("--device-name", default="auto", help="device named in the run records (default: the "
                        "GPU the run used, else the CPU)")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be positive; got {args.budget}")
    out = Path(args.output)
    extra = (TINY if args.tiny else []) + _sizing_flags(args.sizing, args.budget) + extra
    start = time.perf_counter()
    status = _status(out)
    if status != "completed":
        status = train_slice(out, args.preset, extra, args.budget)
    print(f"status: {status} ({time.perf_counter() - start:.0f} s this call)")
    if status == "completed" and args.record:
        options = [*(["--tiny"] if args.tiny else []), "--budget", f"{args.budget:g}",
                   *(["--target", f"{args.target:g}"] if args.target is not None else [])]
        command = shlex.join(["python", "scripts/reproduce_cifar10.py", "--preset", args.preset, *options,
                              *(["--", *extra] if extra and not args.tiny else [])])
        record(out, Path(args.results), args.device_name, command, args.target)
    return 0 if status in ("completed", "paused") else 1


if __name__ == "__main__":
    sys.exit(main())
