"""Write a trained run's teacher and student as shipped models (``titn_edu/weights/`` + manifest).

    python scripts/ship_pretrained.py runs/titn-mnist --student titn-mnist --teacher teacher-mnist

reads ``RUN/metrics.json`` (dataset, command, device, times) and the run's checkpoints, stores the
weights in float16, evaluates each model on the whole test split (before and after the float16
rounding) and on the check subset, and records all of it in ``titn_edu/weights/manifest.json``
(:func:`titn_edu.pretrained.publish`). Needs the data (``TITN_EDU_DATA``). A run whose student is
still training in slices can already ship its teacher. ``--table`` prints the README's table of the
shipped models from the manifest; ``--recount-flops`` re-measures every shipped model's GFLOPs with
today's :func:`titn_edu.metrics.count_flops`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from titn_edu.pretrained import publish


def _training(record: dict, role: str) -> dict:
    history = record.get("teacher_history" if role == "teacher" else "history") or {}
    epochs = history.get("epochs", [])
    config = record.get("config") or {}
    student = role == "student"
    return {
        "command": record.get("command"),
        "commands": record.get("commands") or [record.get("command")],  # every slice of a resumed run
        "preset": config.get("preset"),
        "device": config.get("device"),
        "threads": config.get("threads"),
        "machine": record.get("machine"),
        "epochs": len(epochs),
        "train_seconds": round(sum(float(r.get("seconds") or 0.0) for r in epochs), 1),
        "seed": config.get("seed"),
        # a fine-tuning run (--init-from): the weights it started from, and the teacher it used
        "init_from": config.get("init_from") if student else None,
        "teacher": config.get("teacher") if student else None,
    }


def finished_checkpoint(run: Path, record: dict, role: str) -> str | None:
    """The checkpoint of a finished stage: a completed run's, or the teacher of a run whose student is
    still training (the teacher stage ends first, so it can be shipped while the student goes on)."""
    if record.get("status") == "completed":
        return (record.get("checkpoints") or {}).get(role)
    if role == "teacher" and (record.get("teacher_history") or {}).get("status") == "completed":
        for file in ("best.pt", "last.pt"):  # best.pt exists only where a validation split picked it
            if (run / "teacher" / file).is_file():
                return str(run / "teacher" / file)
    return None


def table() -> str:
    """The README's table of the shipped models, from the manifest."""
    from titn_edu.pretrained import list_pretrained, pretrained_info

    lines = ["| name | role | parameters | GFLOPs | test top-1 / top-5 (float16 weights; float32) | check subset top-1 "
             "| training (device, epochs, minutes) | file |", "|---|---|---|---|---|---|---|---|"]
    for name in list_pretrained():
        e = pretrained_info(name)
        m, t = e["metrics"], e["training"]
        epochs = f"{t.get('epochs')} from `{t['init_from']}`" if t.get("init_from") else t.get("epochs")
        lines.append(
            f"| `{name}` | {e['role']} ({e['dataset']}) | {e['params']:,} | {e['gflops']:.4f} | "
            f"{m['test_top1']:.2f} % / {m['test_top5']:.2f} % ({m['test_top1_float32']:.2f} %) | "
            f"{e['check']['top1']:.2f} % of {e['check']['samples']:,} | {t.get('device')}, {epochs}, "
            f"{t.get('train_seconds', 0) / 60:.1f} | {e['bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines)


def recount_flops(folder: str | None = None) -> None:
    """Re-measure each shipped model's GFLOPs (one test image's forward pass) and update the manifest.

    Entries written before ``count_flops`` wrote attention out as eq. 1 miss the attention matmuls
    (the fused kernel is invisible to the FLOP counter); the weights and their SHA-256 are untouched.
    """
    from titn_edu.metrics import count_flops
    from titn_edu.pretrained import _MANIFEST, check_subset, load_pretrained, weights_dir
    from titn_edu.utils import save_json

    path = (Path(folder) if folder else weights_dir()) / _MANIFEST
    manifest = json.loads(path.read_text())
    for name, entry in manifest["models"].items():
        image = check_subset(entry["dataset"])[0][0]
        gflops = count_flops(load_pretrained(name), tuple(image.shape))
        print(f"{name}: {entry['gflops']:.4f} -> {gflops:.4f} GFLOPs/image")
        entry["gflops"] = gflops
    save_json(path, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a titn-edu train run folder (with metrics.json) whose stage to ship "
                        "has finished")
    parser.add_argument("--table", action="store_true", help="print the README's table of the shipped models")
    parser.add_argument("--student", help="ship the run's student under this name")
    parser.add_argument("--teacher", help="ship the run's teacher under this name")
    parser.add_argument("--folder", help="where to write (default: the package's weights folder)")
    parser.add_argument("--recount-flops", action="store_true", help="re-measure every shipped model's GFLOPs")
    args = parser.parse_args(argv)
    if args.recount_flops:
        recount_flops(args.folder)
        return 0
    if args.table:
        print(table())
        return 0
    if args.run is None:
        parser.error("give a run folder (or --table)")
    run = Path(args.run)
    record = json.loads((run / "metrics.json").read_text())
    dataset = record["config"]["dataset"]
    for role, name in (("teacher", args.teacher), ("student", args.student)):
        if name is None:
            continue
        checkpoint = finished_checkpoint(run, record, role)
        if checkpoint is None:
            parser.error(f"{run} has not finished training its {role} (status {record.get('status')!r}); "
                         f"finish it with titn-edu train --resume {run} first")
        entry = publish(name, checkpoint, dataset=dataset, role=role, training=_training(record, role),
                        folder=args.folder)
        print(f"{name}: test top-1 {entry['metrics']['test_top1']:.2f} % (float32 "
              f"{entry['metrics']['test_top1_float32']:.2f} %), check subset {entry['check']['top1']:.2f} %, "
              f"{entry['bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
