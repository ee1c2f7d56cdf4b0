"""Train the recorded runs behind the course's Part II (notebooks 08 and 10), with ``titn-edu train``.

    python scripts/course_runs.py                      # every variant, seeds 0 1 2 (3 hours on 2 cores, see --recorded)
    python scripts/course_runs.py --variants titn vit --seeds 0
    python scripts/course_runs.py --list               # the variants and their flags
    python scripts/course_runs.py --recorded           # the recorded runs: accuracy, wall time, threads

One grid, one budget: small ``*-tiny`` students (4 blocks of width 64, 8x8 patches of 2x2 pixels) on a
class-balanced 10,000 of CIFAR-10's training images for 12 epochs, scored on all 10,000 test images.
Everything else comes from the ``cifar10-quick`` preset (AdamW, crop + flip, label smoothing 0.1 on the
label term) and the teacher is the shipped ``teacher-cifar10-quick`` (the ``cifar10-quick`` preset's ResNet-9,
80.41 %; the records name it ``pretrained:teacher-cifar10``, its name when they were made, and record its
parameters and scores, which ``tests/test_course.py`` checks against it). Each variant
changes one thing against **TITN** (teacher + CutMix + hard distillation, eq. 9-10):

* the distillation experiment (notebook 08): without the teacher, without CutMix, without both, soft
  instead of hard distillation, and a weak teacher (the same ResNet-9 trained in the run for 3 epochs on its
  10,000 images, with AdamW);
* the ablations of the paper's Tables 3-5 (notebook 10): ViT, DeiT, TNT, TITN with large patches,
  TITN with MixUp.

A run goes to ``runs/course/VARIANT-seedN/`` (killed runs continue with ``--resume``); once it has
finished, its ``metrics.json`` is recorded as ``results/course/VARIANT_seedN.json``
(:func:`titn_edu.results.record_result`) and the notebooks read those files. A variant whose record
exists is skipped, so the command can be re-run after an interruption; several invocations can share
the work (a run being trained holds ``runs/course/VARIANT-seedN/.lock``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS, RESULTS = ROOT / "runs" / "course", ROOT / "results" / "course"
TEACHER = "pretrained:teacher-cifar10-quick"

#: Shared by every run: the budget and the data.
BASE = ["--preset", "cifar10-quick", "--limit", "10000", "--epochs", "12", "--no-track-test"]

#: variant -> (label, flags): one change away from TITN each.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "titn": ("TITN", ["--model", "titn-tiny", "--teacher", TEACHER, "--mixing", "cutmix"]),
    "titn-no-teacher": ("TITN, no teacher", ["--model", "titn-tiny", "--teacher", "none", "--mixing", "cutmix"]),
    "titn-no-cutmix": ("TITN, no CutMix", ["--model", "titn-tiny", "--teacher", TEACHER, "--mixing", "none"]),
    "titn-no-teacher-no-cutmix": ("TITN, neither", ["--model", "titn-tiny", "--teacher", "none", "--mixing", "none"]),
    "titn-soft": ("TITN, soft distillation",
                  ["--model", "titn-tiny", "--teacher", TEACHER, "--mixing", "cutmix", "--distillation", "soft",
                   "--tau", "3"]),
    "titn-weak-teacher": ("TITN, weak teacher",
                          ["--model", "titn-tiny", "--teacher", "resnet9", "--teacher-arg", "width=16",
                           "--teacher-epochs", "3", "--teacher-optimizer", "adamw", "--teacher-lr", "0.003",
                           "--mixing", "cutmix"]),
    "vit": ("ViT", ["--model", "vit-tiny", "--teacher", "none", "--mixing", "cutmix"]),
    "deit": ("DeiT", ["--model", "deit-tiny", "--teacher", TEACHER, "--mixing", "cutmix"]),
    "tnt": ("TNT", ["--model", "tnt-tiny", "--teacher", "none", "--mixing", "cutmix"]),
    "titn-large-patch": ("TITN large patch",
                         ["--model", "titn-tiny-large-patch", "--teacher", TEACHER, "--mixing", "cutmix"]),
    "titn-mixup": ("TITN MixUp", ["--model", "titn-tiny", "--teacher", TEACHER, "--mixing", "mixup"]),
}


def _finished(run: Path) -> bool:
    metrics = run / "metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text()).get("status") == "completed"


def _claim(out: Path) -> Path | None:
    """Create ``out/.lock`` (the caller removes it when the run ends); ``None`` if another invocation holds it,
    so that two invocations never train the same run."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return None
    return lock


def run_one(variant: str, seed: int, threads: int) -> Path | None:
    """Train (or continue) one run and record it; returns the record's path (``None``: another invocation
    is training it)."""
    from titn_edu.results import record_result

    label, flags = VARIANTS[variant]
    out, record = RUNS / f"{variant}-seed{seed}", RESULTS / f"{variant}_seed{seed}.json"
    command = ["titn-edu", "train", *BASE, *flags, "--seed", str(seed), "--threads", str(threads), "--no-progress"]
    if not _finished(out):
        lock = _claim(out)
        if lock is None:
            return None
        try:
            where = ["--resume", str(out)] if (out / "metrics.json").is_file() else ["--output", str(out)]
            print(f"[{variant} seed {seed}]", " ".join(command + where), flush=True)
            subprocess.run(command + where, check=True)
        finally:
            lock.unlink(missing_ok=True)
    config = json.loads((out / "metrics.json").read_text())["config"]
    return record_result(out / "metrics.json", record, dataset=config["dataset"], model=config["model"],
                         role="student", device=config["device"], command=" ".join(command + ["--output", "DIR"]),
                         variant=variant, label=label, seed=seed, experiment="cifar10-tiny-10k-12ep")


def _print_recorded() -> int:
    """One line per recorded run, then the total wall time, from the records themselves."""
    records = sorted(RESULTS.glob("*_seed*.json"))
    if not records:
        print(f"no recorded runs in {RESULTS}")
        return 1
    minutes = []
    for path in records:
        record = json.loads(path.read_text())
        minutes.append(record["wall_seconds"] / 60)
        print(f"{path.stem:34} top-1 {record['test_top1']:6.2f} %  {minutes[-1]:5.1f} min  "
              f"{record['config']['threads']} thread(s)")
    print(f"{len(records)} runs, {min(minutes):.1f}-{max(minutes):.1f} minutes each, {sum(minutes) / 60:.1f} hours in all")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument("--list", action="store_true", help="print the variants and their flags, then stop")
    parser.add_argument("--recorded", action="store_true",
                        help="print the recorded runs (test top-1, wall minutes, threads) and their total time, then stop")
    args = parser.parse_args(argv)
    if args.recorded:
        return _print_recorded()
    if args.list:
        for name, (label, flags) in VARIANTS.items():
            print(f"{name:28} {label:26} {' '.join(flags)}")
        return 0
    for seed in args.seeds:  # seed by seed: after each pass every variant has the same number of seeds
        for variant in args.variants:
            if not (RESULTS / f"{variant}_seed{seed}.json").is_file():
                record = run_one(variant, seed, args.threads)
                print(f"recorded {record.relative_to(ROOT)}" if record else
                      f"skipped {variant} seed {seed}: another invocation is training it", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
