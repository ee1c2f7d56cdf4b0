"""The ``titn-edu`` command line (also ``python -m titn_edu``).

::

    titn-edu train --preset mnist-quick --output runs/quick        # CPU: teacher + TITN student
    titn-edu train --preset paper-cifar10 --output runs/c10        # the paper's settings (GPU)
    titn-edu train --dataset mnist --model titn-tiny --teacher none --epochs 3 --output runs/x
    titn-edu train --resume runs/c10                                # continue an interrupted run
    torchrun --standalone --nproc_per_node=4 -m titn_edu train --preset paper-cifar10 --output runs/c10  # 4 GPUs
    titn-edu evaluate runs/quick/student/best.pt --dataset mnist
    titn-edu data export cifar10 --out /media/usb/titn-data         # stage data for offline machines
    titn-edu course release --out handout                           # student notebooks + autograders (otter)
    titn-edu course grade submissions/ --release handout --out grades   # per-student, per-question CSV

A training run writes, under ``--output DIR``: ``teacher/`` and ``student/`` (each with
``last.pt``, ``best.pt``, ``history.json``) and ``metrics.json`` (test top-1/top-5 in percent, macro
precision/recall/F1, parameters, GFLOPs, wall time, the histories and the settings used).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .presets import DEFAULTS, PRESETS  # the training presets (also importable from here, as before)

__all__ = ["main", "build_parser", "PRESETS"]

# ----------------------------------------------------------------------------- argument types
def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}; got {value}")
        return value

    return parse


def _positive_float(what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number; got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be a finite number > 0; got {text}")
        return value

    return parse


def _non_negative_float(what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number; got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{what} must be a finite number >= 0; got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]; got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]; got {text}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. depth=6); got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word: keep it as a string
    return key, value


def _smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text}")
    return value


def _threads(text: str) -> int | str:
    return "auto" if text == "auto" else _int_at_least(1, "--threads")(text)


def _device(text: str) -> str:
    from .utils import resolve_device

    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The parser of ``titn-edu``: ``train``, ``evaluate``, ``data export``, ``course`` (and ``bench``)."""
    parser = argparse.ArgumentParser(
        prog="titn-edu",
        description="Train and evaluate TITN (Transformer-in-Transformer with knowledge distillation) models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,data,course,bench}")
    sub.required = True
    # (only listed here; `titn-edu bench ...` is handed to titn_edu.bench.main, which has its own options)
    sub.add_parser("bench", add_help=False,
                   help="throughput and memory of TITN against timm's TNT (titn-edu bench --help)")
    tr = sub.add_parser("train", help="train a teacher, then a TITN student with distillation",
                        description="Train a teacher (if one is named), then the student; see the presets.")
    _add_model_flags(tr)
    _add_recipe_flags(tr)
    _add_run_flags(tr)
    _add_evaluate_command(sub)
    _add_data_command(sub)
    _add_course_command(sub)
    return parser


def _add_model_flags(tr: argparse.ArgumentParser) -> None:
    """``train``: what to train (a preset, or the dataset, the student and the teacher)."""
    from .data import DATASETS
    from .model import list_models

    tr.add_argument("--preset", choices=sorted(PRESETS), help="a ready configuration (flags override its values)")
    tr.add_argument("--dataset", choices=DATASETS, help="dataset (required without --preset)")
    tr.add_argument("--model", choices=list_models(),
                    help="student model (build_model name); a model other than the preset's drops the preset's "
                         "--model-arg values")
    tr.add_argument("--model-arg", dest="model_args", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="override a student constructor argument, e.g. --model-arg depth=6 (repeatable)")
    tr.add_argument("--teacher", help="teacher: a name to train first (e.g. vgg16_bn, cnn-small, resnet18), "
                    "a checkpoint (.pt or run folder) to load, or 'none'")
    tr.add_argument("--teacher-arg", dest="teacher_args", type=_key_value, action="append", default=[],
                    metavar="KEY=VALUE", help="override a teacher constructor argument, e.g. --teacher-arg width=32")


def _add_recipe_flags(tr: argparse.ArgumentParser) -> None:
    """``train``: how to train (each flag overrides the preset's value)."""
    tr.add_argument("--teacher-epochs", type=_int_at_least(1, "--teacher-epochs"), help="epochs to train the teacher")
    tr.add_argument("--teacher-optimizer", choices=["paper", "sgd", "adamw"], help="the teacher's optimisation preset")
    tr.add_argument("--teacher-lr", type=_positive_float("--teacher-lr"), help="the teacher's peak learning rate")
    tr.add_argument("--epochs", type=_int_at_least(1, "--epochs"), help="epochs to train the student")
    tr.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), help="student batch size")
    tr.add_argument("--lr", type=_positive_float("--lr"), help="student peak learning rate")
    tr.add_argument("--optimizer", choices=["paper", "sgd", "adamw"], help="optimisation preset (paper = sgd)")
    tr.add_argument("--warmup-epochs", type=_non_negative_float("--warmup-epochs"), help="linear warm-up length in epochs")
    tr.add_argument("--mixing", choices=["cutmix", "mixup", "cutmix_or_mixup", "none"], help="batch mixing")
    tr.add_argument("--distillation", choices=["hard", "soft"], help="distillation loss (hard = eq. 10)")
    tr.add_argument("--alpha", type=_fraction, help="weight of the label term in eq. 10 (0..1)")
    tr.add_argument("--tau", type=_positive_float("--tau"), help="temperature of soft distillation")
    tr.add_argument("--limit", type=_int_at_least(1, "--limit"), help="train on this many images (class-balanced)")
    tr.add_argument("--test-limit", type=_int_at_least(1, "--test-limit"), help="test on this many images")
    tr.add_argument("--val-size", type=_int_at_least(0, "--val-size"),
                    help="training images held out for validation and best.pt (0: none)")
    tr.add_argument("--augment", choices=["paper", "crop-flip", "none"], default=None,
                    help="per-image augmentation: the paper's (AutoAugment, crop, flip), crop and flip only, or none")
    tr.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                    help="no per-image augmentation (= --augment none)")
    tr.add_argument("--label-smoothing", type=_smoothing, help="label smoothing of the label term (0 = the paper's loss)")
    tr.add_argument("--weight-decay", type=_non_negative_float("--weight-decay"),
                    help="student weight decay (default: the optimizer preset's)")
    tr.add_argument("--policy-group", type=_int_at_least(1, "--policy-group"),
                    help="with --device-data and the paper's augmentation: AutoAugment draws one sub-policy per "
                         "this many images (default 8; larger: fewer, bigger calls on a GPU)")
    tr.add_argument("--track-test", action=argparse.BooleanOptionalAction, default=None,
                    help="evaluate the test set after every epoch, for the accuracy-versus-time curve only "
                         "(never used to pick a checkpoint)")


def _add_run_flags(tr: argparse.ArgumentParser) -> None:
    """``train``: where and how long to run, where the data and the results go."""
    tr.add_argument("--time-limit", type=_positive_float("--time-limit"), metavar="MINUTES",
                    help="stop after the epoch when another as long would end past this many minutes, "
                         "keeping last.pt; continue later with --resume (training in slices; exit code 75)")
    tr.add_argument("--save-every", type=_int_at_least(1, "--save-every"), metavar="EPOCHS",
                    help="write last.pt and best.pt every this many epochs, after the last one and when the run "
                         "stops (default: the preset's, else 1)")
    tr.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    tr.add_argument("--threads", type=_threads, default="auto",
                    help="CPU threads for PyTorch; auto = the cores not already busy (default)")
    tr.add_argument("--num-workers", type=_int_at_least(0, "--num-workers"), default=0, help="DataLoader workers")
    tr.add_argument("--compile", action="store_true", help="torch.compile the student (CUDA)")
    tr.add_argument("--accelerate", action=argparse.BooleanOptionalAction, default=None,
                    help="run the student's inner blocks on the compiled CPU kernel of titn_edu.accel, same "
                         "results (default: on CPU)")
    tr.add_argument("--device-data", action=argparse.BooleanOptionalAction, default=None,
                    help="keep the training images on the device and augment whole batches there "
                         "(titn_edu.DeviceLoader; default: on CUDA only; not with preloaded data)")
    tr.add_argument("--teacher-bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="run the teacher under bf16 autocast (default: on CUDA only)")
    tr.add_argument("--data-root", help="data folder (default: $TITN_EDU_DATA, else the per-user cache)")
    tr.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                    help="download missing data (default: only when not found locally)")
    tr.add_argument("--output", help="run folder for checkpoints, histories and metrics.json")
    tr.add_argument("--resume", help="continue the run in this folder (teacher and student)")
    tr.add_argument("--init-from", metavar="WEIGHTS",
                    help="start the student from trained weights instead of a fresh initialisation: a checkpoint "
                         "(e.g. RUN/student/last.pt) or a shipped model (pretrained:NAME); --model and --model-arg "
                         "must build the same architecture. A new run (fine-tuning); --resume continues the same one")
    tr.add_argument("--seed", type=_int_at_least(0, "--seed"), default=0, help="random seed (default 0)")
    tr.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    tr.add_argument("--dist-backend", choices=["auto", "gloo", "nccl"], default="auto",
                    help="under torchrun: the processes' backend (auto = nccl on CUDA, gloo on CPU)")
    tr.add_argument("--dist-timeout", type=_positive_float("--dist-timeout"), default=600.0, metavar="SECONDS",
                    help="under torchrun: how long a process waits for the others before the job stops "
                         "(default 600)")


def _add_evaluate_command(sub: Any) -> None:
    """``titn-edu evaluate CHECKPOINT``: Table 3's metrics of a checkpoint on a test set."""
    from .data import DATASETS

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on a test set (Table 3 metrics)")
    ev.add_argument("checkpoint", help="a .pt checkpoint or a run folder (best.pt, else last.pt)")
    ev.add_argument("--dataset", choices=DATASETS, help="dataset (default: the one the checkpoint was trained on)")
    ev.add_argument("--split", choices=["test", "train"], default="test")
    ev.add_argument("--limit", type=_int_at_least(1, "--limit"), help="evaluate on this many images")
    ev.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), default=256)
    ev.add_argument("--device", type=_device, default="auto")
    ev.add_argument("--threads", type=_threads, default="auto")
    ev.add_argument("--data-root", help="data folder (default: $TITN_EDU_DATA, else the per-user cache)")
    ev.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                    help="download missing data (default: only when not found locally)")
    ev.add_argument("--output", help="write metrics.json into this folder")


def _add_data_command(sub: Any) -> None:
    """``titn-edu data export NAME``: stage a dataset for offline machines."""
    from .data import DATASETS

    da = sub.add_parser("data", help="dataset utilities")
    dsub = da.add_subparsers(dest="data_command", metavar="{export}")
    dsub.required = True
    ex = dsub.add_parser("export", help="write a dataset in the offline .npz format",
                         description="Write NAME as DIR/NAME-npz/NAME_{train,test}.npz; point TITN_EDU_DATA at DIR.")
    ex.add_argument("name", choices=DATASETS)
    ex.add_argument("--out", required=True, help="output data root")
    ex.add_argument("--data-root", help="where to read the dataset from (default: $TITN_EDU_DATA / cache)")
    ex.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                    help="download if missing (default: only when not found)")
    ex.add_argument("--splits", nargs="+", choices=["train", "test"], default=["train", "test"])


def _add_course_command(sub: Any) -> None:
    """``titn-edu course release`` / ``titn-edu course grade``: coursework with otter-grader (titn_edu.grading)."""
    co = sub.add_parser("course", help="coursework: student notebooks, autograders, grading (otter-grader)")
    csub = co.add_subparsers(dest="course_command", metavar="{release,grade}")
    csub.required = True
    rel = csub.add_parser("release", help="write the student notebooks and the autograders",
                          description="Run otter assign on every marked-up course notebook: DIR/student (hand out), "
                                      "DIR/autograder (one zip per notebook), DIR/solutions, DIR/course.json.")
    rel.add_argument("--out", required=True, help="the release folder DIR (must be new or empty, unless --force)")
    rel.add_argument("--notebooks", nargs="+", help="notebooks or folders (default: the repository's notebooks/)")
    rel.add_argument("--skip-tests", action="store_true",
                     help="do not run every solution notebook against its own tests (faster)")
    rel.add_argument("--force", action="store_true", help="replace an existing DIR")
    gr = csub.add_parser("grade", help="grade a folder of submissions: grades.csv, one row per student and question",
                         description="SUBMISSIONS/<student>/<notebook>.ipynb, graded with otter run (no Docker).")
    gr.add_argument("submissions", help="folder with one folder per student")
    gr.add_argument("--release", required=True, help="the folder written by `titn-edu course release`")
    gr.add_argument("--out", required=True, help="where to write grades.csv, <notebook>.csv and logs/")
    gr.add_argument("--jobs", type=_int_at_least(1, "--jobs"), default=1, help="submissions graded at once (default 1)")
    gr.add_argument("--timeout", type=_positive_float("--timeout"), default=1800.0,
                    help="seconds one submission may take (default 1800)")


# ----------------------------------------------------------------------------- helpers
def _auto_threads() -> int:
    """The cores not already busy (1-minute load average), at least 1.

    On a shared CPU, more PyTorch threads than idle cores makes small models *slower* (the threads
    wait for each other); on an idle machine this is every core.
    """
    from .utils import usable_cores

    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def _set_threads(value: int | str, device: torch.device, processes: int = 1) -> int:
    """PyTorch's threads; ``auto``: the idle cores, shared by the ``processes`` of this machine (torchrun)."""
    if device.type == "cpu":
        torch.set_num_threads(max(1, _auto_threads() // processes) if value == "auto" else int(value))
    elif value != "auto":
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


def _say(text: str) -> None:
    """Print a line of the run's report (under torchrun: from rank 0 only)."""
    from .distributed import current

    if current().rank == 0:
        print(text, flush=True)


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser, resumed: dict | None) -> dict[str, Any]:
    """Preset (or saved settings when resuming) < defaults < explicit flags."""
    if resumed is not None:
        base = dict(resumed)
    elif args.preset:
        base = dict(DEFAULTS, **PRESETS[args.preset])
    else:
        if not args.dataset:
            parser.error("train needs --dataset (or a --preset); e.g. --preset mnist-quick")
        base = dict(DEFAULTS)
    flags = dict(
        dataset=args.dataset, model=args.model, teacher=args.teacher, teacher_epochs=args.teacher_epochs,
        teacher_optimizer=args.teacher_optimizer, teacher_lr=args.teacher_lr,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        warmup_epochs=args.warmup_epochs, mixing=args.mixing, distillation=args.distillation, alpha=args.alpha,
        tau=args.tau, limit=args.limit, test_limit=args.test_limit, val_size=args.val_size, augment=args.augment,
        label_smoothing=args.label_smoothing, weight_decay=args.weight_decay, track_test=args.track_test,
        policy_group=args.policy_group, save_every=args.save_every, init_from=args.init_from,
    )
    settings = dict(base)
    settings.setdefault("limit", None)
    settings.setdefault("test_limit", None)
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.model is not None and args.model != base.get("model"):
        settings["model_args"] = {}  # the preset's model arguments belong to the preset's model
    settings["model_args"] = dict(settings.get("model_args") or {}, **dict(args.model_args))
    settings["teacher_args"] = dict(settings.get("teacher_args") or {}, **dict(args.teacher_args))
    settings["preset"] = settings.get("preset") if resumed is not None else args.preset
    settings["seed"] = args.seed
    return settings


def _resolve_teacher(spec: str | None, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    """('none', None) | ('checkpoint', Path) | ('pretrained', name) | ('name', str)."""
    from .pretrained import list_pretrained
    from .teachers import list_teachers

    if spec is None or spec.lower() == "none":
        return "none", None
    if spec.startswith(PRETRAINED_PREFIX):
        name = spec[len(PRETRAINED_PREFIX):]
        if name not in list_pretrained():
            parser.error(f"--teacher {spec!r}: no shipped model {name!r}; shipped: {list_pretrained()}")
        return "pretrained", name
    if spec in list_teachers() or spec.startswith("torchvision/"):
        return "name", spec
    path = Path(spec).expanduser()
    if path.exists():
        return "checkpoint", path
    parser.error(
        f"--teacher {spec!r} is neither a teacher name (e.g. vgg16_bn, cnn-small, resnet9; see "
        f"titn_edu.teachers.list_teachers()), a shipped model ({PRETRAINED_PREFIX}NAME, e.g. "
        f"{PRETRAINED_PREFIX}teacher-cifar10), an existing checkpoint, nor 'none'"
    )
    raise AssertionError  # parser.error exits


#: ``--teacher pretrained:NAME`` loads the shipped model NAME (``titn_edu.list_pretrained()``).
PRETRAINED_PREFIX = "pretrained:"


def _split_indices(targets: torch.Tensor, val_size: int, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split of a training set into (train, validation) indices."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=gen)
    classes = int(targets.max()) + 1
    per_class = [order[targets[order] == c] for c in range(classes)]
    n = len(targets)
    val_counts = [round(val_size * len(p) / n) for p in per_class]
    val = torch.cat([p[:k] for p, k in zip(per_class, val_counts)])
    rest = [p[k:] for p, k in zip(per_class, val_counts)]
    train = torch.cat(rest)
    if limit is not None and limit < len(train):
        # Interleave the classes so any prefix is balanced, then cut.
        width = max(len(r) for r in rest)
        rows = torch.full((len(rest), width), -1, dtype=torch.long)
        for i, r in enumerate(rest):
            rows[i, : len(r)] = r
        flat = rows.t().reshape(-1)
        train = flat[flat >= 0][:limit]
    return train.sort().values, val.sort().values


def _preload(dataset: Any, transform: Any, chunk: int = 4096) -> torch.utils.data.TensorDataset:
    """Apply a deterministic transform to a whole uint8 dataset at once; keep the floats in memory."""
    from torchvision import tv_tensors

    parts = [transform(tv_tensors.Image(dataset.images[i : i + chunk])) for i in range(0, len(dataset), chunk)]
    return torch.utils.data.TensorDataset(torch.cat(parts), dataset.targets.clone())


def _datasets(s: dict[str, Any], root: str | None, download: bool | None) -> tuple[Any, Any, Any]:
    """(train, val or None, test) for the settings ``s``."""
    from .data import augmentation_level, get_dataset, get_transforms

    name = s["dataset"]
    full = get_dataset(name, train=True, root=root, download=download, transform="raw")
    test = get_dataset(name, train=False, root=root, download=download, transform="raw", limit=s.get("test_limit"),
                       seed=s["seed"])
    train_idx, val_idx = _split_indices(full.targets, s["val_size"], s.get("limit"), s["seed"])
    if len(train_idx) == 0:
        raise ValueError("no training images left; lower --val-size or raise --limit.")
    eval_tf = get_transforms(name, train=False)
    train_tf = get_transforms(name, train=True, augment=s["augment"])
    train, val = full.subset(train_idx), (full.subset(val_idx) if len(val_idx) else None)
    if s["preload"] and augmentation_level(s["augment"]) == "none":
        train = _preload(train, train_tf)
    else:
        train.transform = train_tf
    if val is not None:
        val = _preload(val, eval_tf) if s["preload"] else val
        if not s["preload"]:
            val.transform = eval_tf
    if s["preload"]:
        test = _preload(test, eval_tf)
    else:
        test.transform = eval_tf
    return train, val, test


def _metrics_row(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "test_top1": result["top1"], "test_top5": result["top5"], "precision": result["precision"],
        "recall": result["recall"], "f1": result["f1"], "params": result["params"], "gflops": result["gflops"],
        "test_loss": result["loss"], "test_samples": result["num_samples"], "eval_seconds": result["seconds"],
    }


def _summary(title: str, row: dict[str, Any]) -> str:
    return (f"{title}: top-1 {row['test_top1']:.2f} %, top-5 {row['test_top5']:.2f} %, precision {row['precision']:.4f}, "
            f"recall {row['recall']:.4f}, F1 {row['f1']:.4f}, {row['params']:,} parameters, "
            f"{row['gflops']:.4f} GFLOPs/image")


# ----------------------------------------------------------------------------- commands
def _train_stage(model, train, val, *, out: Path, resume: bool, **kwargs):
    from .train import fit

    resume_from = out if resume and (out / "last.pt").is_file() else None
    return fit(model, train, val, output_dir=out, resume=resume_from, **kwargs)


def _cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``titn-edu train``: the teacher (trained here, loaded or none), then the student, then metrics.json.

    Under ``torchrun`` every process runs this command; they join one job and train together
    (:mod:`titn_edu.distributed`), and rank 0 alone writes the run folder.
    """
    start = time.perf_counter()
    from . import distributed
    from .utils import resolve_device

    world, device = distributed.start(resolve_device(args.device), backend=args.dist_backend,
                                      timeout=args.dist_timeout)
    try:
        return _train(args, parser, world, device, start)
    finally:
        distributed.stop()


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, world: Any, device: torch.device,
           start: float) -> int:
    """The body of ``titn-edu train`` for one process (of ``world``), which trains on ``device``."""
    from .distributed import check_same, one_process_per_node_first, split_batch
    from .utils import save_json, seed_everything

    s = _settings(args, parser, _resumed_settings(args, parser))
    if not args.output:
        parser.error("train needs --output DIR (where checkpoints and metrics.json go)")
    teacher_kind, teacher_ref = _resolve_teacher(s["teacher"], parser)
    _check_shipped_teacher(teacher_kind, teacher_ref, s["dataset"], parser)
    check_same("the command's settings", s)  # several processes: all started alike (before anything is written)
    if s["batch_size"] is not None:  # and able to share the batch: checked together, right after meeting
        split_batch(s["batch_size"], world.size)
    out = Path(args.output).expanduser()
    threads = _set_threads(args.threads, device, world.local_size)
    seed_everything(s["seed"])
    student, teacher = _build_models(s, teacher_kind, teacher_ref, parser)
    if s.get("init_from"):
        _init_student(student, s, parser)
    record = _new_record(args, s, out, device, threads)
    record["commands"] = _earlier_commands(out) if args.resume else []
    record["commands"].append(record["command"])  # every slice's command, the first started the run
    record["config"]["world_size"] = world.size
    if world.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "metrics.json", record)  # the settings are on disk from the start (for --resume)
    with one_process_per_node_first():  # several processes on a machine: one of them downloads, if need be
        train, val, test = _datasets(s, args.data_root, args.download)
    _say(f"{s['dataset']}: {len(train)} training, {len(val) if val is not None else 0} validation, {len(test)} test "
         f"images; device {device}, {threads} thread(s)")
    device_data = _use_device_data(args.device_data, s.get("device_data"), device, train)
    if device_data:  # the validation and test images on the device too: scored without a per-image transform
        val, test = (_scored_on_device(x, s, device) for x in (val, test))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: cuDNN picks its fastest convolutions once
    record["config"]["device_data"] = device_data
    record["config"]["accelerate"] = device.type == "cpu" if args.accelerate is None else args.accelerate
    stage = _Stages(args, s, out, device, record, train, val, test, start, device_data)
    teacher, history = _teacher_stage(stage, teacher_kind, teacher_ref, teacher)
    if history is not None and history.status != "completed":
        return _stopped(record, history, out, "teacher")
    if teacher is not None:
        record["teacher"] = _teacher_row(teacher, teacher_kind, teacher_ref, test, device)
        _say(_summary("teacher", record["teacher"]))
        _warn_if_at_chance(record["teacher"], s["dataset"])
    student, history = _student_stage(stage, student, teacher)
    if history.status != "completed":
        return _stopped(record, history, out, "student")
    _finish_run(stage, student, teacher_kind, teacher_ref)
    return 0


def _earlier_commands(run: Path) -> list[str]:
    """The commands of a resumed run's earlier slices, from its metrics.json (runs recorded before
    ``commands`` existed give their last command only)."""
    saved = run / "metrics.json"
    if not saved.is_file():
        return []
    record = json.loads(saved.read_text())
    return list(record.get("commands") or ([record["command"]] if record.get("command") else []))


def _resumed_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    """With ``--resume DIR``: the run's saved settings (if it saved them) and ``--output DIR``; else ``None``."""
    if not args.resume:
        return None
    run = Path(args.resume).expanduser()
    saved = run / "metrics.json"
    if not run.is_dir() or not (saved.is_file() or (run / "student").is_dir() or (run / "teacher").is_dir()):
        parser.error(f"--resume {args.resume!r}: no titn-edu run folder there (expected teacher/, student/ or metrics.json)")
    resumed = json.loads(saved.read_text()).get("config") if saved.is_file() else None
    if args.output and Path(args.output).expanduser().resolve() != run.resolve():
        parser.error("--resume continues a run in its own folder; drop --output or give the same folder")
    args.output = str(run)
    return resumed


def _check_shipped_teacher(kind: str, ref: Any, dataset: str, parser: argparse.ArgumentParser) -> None:
    """A shipped teacher (``--teacher pretrained:NAME``) must have been trained on the run's dataset."""
    if kind != "pretrained":
        return
    from .pretrained import pretrained_info

    trained_on = pretrained_info(ref)["dataset"]
    if trained_on != dataset:
        parser.error(f"--teacher {PRETRAINED_PREFIX}{ref} was trained on {trained_on}, not {dataset}")


def _build_models(s: dict[str, Any], teacher_kind: str, teacher_ref: Any,
                  parser: argparse.ArgumentParser) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The (untrained) student, and the teacher when it is trained here (``--teacher NAME``), else ``None``."""
    from .data import IN_CHANS, NUM_CLASSES
    from .model import build_model
    from .teachers import build_teacher

    num_classes, in_chans = NUM_CLASSES[s["dataset"]], IN_CHANS[s["dataset"]]
    try:
        student = build_model(s["model"], num_classes=num_classes, in_chans=in_chans, **s["model_args"])
    except (TypeError, ValueError) as err:
        parser.error(f"cannot build the student {s['model']!r} with {s['model_args']}: {err}")
    teacher = None
    if teacher_kind == "name":
        try:
            teacher = build_teacher(teacher_ref, num_classes=num_classes, in_chans=in_chans, **s["teacher_args"])
        except (TypeError, ValueError) as err:
            parser.error(f"cannot build the teacher {teacher_ref!r}: {err}")
    return student, teacher


def _init_student(student: torch.nn.Module, s: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """``--init-from``: load trained weights into the freshly built student (the same architecture)."""
    from .checkpoint import load_checkpoint
    from .pretrained import load_pretrained

    spec = s["init_from"]
    try:
        if spec.startswith(PRETRAINED_PREFIX):
            state = load_pretrained(spec[len(PRETRAINED_PREFIX):]).state_dict()
        else:
            state = load_checkpoint(spec)["state_dict"]
    except (FileNotFoundError, ValueError, TypeError) as err:  # a missing file, a bad checkpoint, an unknown name
        parser.error(f"--init-from {spec!r}: {err}")
    mine = student.state_dict()
    misfits = [k for k in mine if k not in state or state[k].shape != mine[k].shape] + [k for k in state if k not in mine]
    if misfits:
        parser.error(f"--init-from {spec!r}: its weights do not fit the student {s['model']} {s['model_args']} "
                     f"(first difference: {misfits[0]!r}); give the --model and --model-arg of the run that trained them")
    student.load_state_dict(state)


def _new_record(args: argparse.Namespace, s: dict[str, Any], out: Path, device: torch.device,
                threads: int) -> dict[str, Any]:
    """The start of metrics.json: the settings, the command, the machine and the versions."""
    from . import __version__

    return {"config": dict(s, output=str(out), device=str(device), threads=threads),
            "command": " ".join(["titn-edu", *map(shlex.quote, getattr(args, "argv", []))]),
            "started_at": time.time(), "machine": _machine(),
            "versions": {"titn_edu": __version__, "torch": str(torch.__version__),
                         "python": platform.python_version()},
            "status": "running"}


@dataclass
class _Stages:
    """What the teacher and student stages of ``titn-edu train`` share."""

    args: argparse.Namespace
    s: dict[str, Any]  # the settings (preset < defaults < flags)
    out: Path  # the run folder
    device: torch.device
    record: dict[str, Any]  # metrics.json, filled in as the run goes
    train: Any
    val: Any
    test: Any
    start: float  # time.perf_counter() when the command started (for --time-limit)
    device_data: bool  # the training images live on the device (DeviceLoader)

    def fit_options(self) -> dict[str, Any]:
        """``fit``'s arguments common to both stages."""
        return dict(device=self.device, progress=self.args.progress, num_workers=self.args.num_workers,
                    test_data=self.test if self.s.get("track_test") else None,
                    callbacks=_time_limit(self.args.time_limit, self.start), save_every=self.s.get("save_every") or 1)

    def feed(self, batch_size: int, limit: int | None = None, augment: Any = None) -> Any:
        """The training data as fit gets it: a DeviceLoader (--device-data) or the dataset itself.

        ``augment``: the DeviceLoader's augmentation (default: the run's ``augment``)."""
        from .data import ImageArrayDataset
        from .device_data import DeviceLoader

        data = self.train
        if limit is not None and limit < len(data):
            data = data.subset(range(limit)) if isinstance(data, ImageArrayDataset) else torch.utils.data.Subset(data, range(limit))
        if self.device_data and isinstance(data, ImageArrayDataset):
            return DeviceLoader(data, self.s["dataset"], batch_size=batch_size, train=True,
                                augment=_first(augment, self.s["augment"]), device=self.device,
                                policy_group=self.s.get("policy_group") or 8)
        return data


def _use_device_data(flag: bool | None, preset: bool | None, device: torch.device, train: Any) -> bool:
    """Whether the training images live on the device (--device-data; default: the preset's, else on CUDA)."""
    from .data import ImageArrayDataset

    device_data = flag if flag is not None else preset
    device_data = device.type == "cuda" if device_data is None else device_data
    if device_data and not isinstance(train, ImageArrayDataset):  # preloaded (mnist-quick): nothing to augment
        if flag:
            _say("--device-data: the training images are preloaded as floats (no augmentation); using them as they are")
        device_data = False
    return device_data


def _scored_on_device(data: Any, s: dict[str, Any], device: torch.device) -> Any:
    """A split to score (validation, test) as a DeviceLoader in its order, unaugmented; a preloaded one as it is."""
    from .data import ImageArrayDataset
    from .device_data import DeviceLoader

    if not isinstance(data, ImageArrayDataset):
        return data
    return DeviceLoader(data, s["dataset"], batch_size=max(s["batch_size"] or 256, 256), train=False,
                        device=device)


def _teacher_stage(stage: _Stages, kind: str, ref: Any, teacher: torch.nn.Module | None) -> tuple[Any, Any]:
    """The teacher: loaded (a checkpoint, a shipped model), trained here (a name) or none.

    Returns ``(teacher, history)``; ``history`` is that of the training here, else ``None``.
    """
    from .checkpoint import load_model
    from .losses import TITNLoss

    if kind == "checkpoint":
        teacher = load_model(ref)
        _say(f"teacher: loaded {ref}")
        return teacher, None
    if kind == "pretrained":
        from .pretrained import load_pretrained

        teacher = load_pretrained(ref)
        _say(f"teacher: the shipped {ref}")
        return teacher, None
    if teacher is None:
        return None, None
    s, out, t_start = stage.s, stage.out / "teacher", time.perf_counter()
    t_batch = s.get("teacher_batch_size") or s["batch_size"]
    t_train = stage.feed(t_batch, s.get("teacher_limit"), s.get("teacher_augment"))
    _say(f"teacher: training {ref} for {s['teacher_epochs'] or s['epochs']} epoch(s)")
    history = _train_stage(
        teacher, t_train, stage.val, out=out, resume=bool(stage.args.resume),
        epochs=s["teacher_epochs"] or s["epochs"], optimizer=s.get("teacher_optimizer") or s["optimizer"],
        lr=s.get("teacher_lr") or s["lr"], batch_size=t_batch,
        weight_decay=_first(s.get("teacher_weight_decay"), s.get("weight_decay")),
        loss=TITNLoss(label_smoothing=_first(s.get("teacher_label_smoothing"), s.get("label_smoothing"), 0.0)),
        mixing=s.get("teacher_mixing") or s["mixing"], mix_alpha=s["mix_alpha"],
        warmup_epochs=_first(s.get("teacher_warmup_epochs"), s["warmup_epochs"]),
        run_info={"dataset": s["dataset"], "role": "teacher"}, **stage.fit_options(),
    )
    stage.record["teacher_history"] = history.to_dict()
    if history.status != "completed":
        return teacher, history
    if stage.val is not None and (out / "best.pt").is_file():
        teacher = load_model(out / "best.pt")
    stage.record["teacher_train_seconds"] = time.perf_counter() - t_start
    return teacher, history


def _teacher_row(teacher: torch.nn.Module, kind: str, ref: Any, test: Any, device: torch.device) -> dict[str, Any]:
    """The teacher's test metrics for metrics.json, with its name."""
    from .train import evaluate

    row = _metrics_row(evaluate(teacher, test, device=device, all_processes=True))  # torchrun: shared out
    row["name"] = {"name": ref, "pretrained": f"{PRETRAINED_PREFIX}{ref}"}.get(kind, str(ref))
    return row


def _warn_if_at_chance(row: dict[str, Any], dataset: str) -> None:
    """A teacher no better than guessing gives the distillation head nothing to learn: say so before the
    student trains (often a diverged teacher: too few warm-up steps for its learning rate on little data)."""
    from .data import NUM_CLASSES

    chance = 100.0 / NUM_CLASSES[dataset]
    if row["test_top1"] < 1.5 * chance:
        _say(f"warning: the teacher is at chance level ({row['test_top1']:.2f} % top-1, chance {chance:.0f} %): "
             f"its labels teach the student nothing. Its training probably diverged; try a smaller --teacher-lr, "
             f"--teacher-optimizer adamw, more --teacher-epochs or more images.")


def _student_stage(stage: _Stages, student: torch.nn.Module, teacher: torch.nn.Module | None) -> tuple[Any, Any]:
    """Train the student (with distillation when there is a teacher); return ``(student, history)``."""
    from .checkpoint import load_model
    from .losses import TITNLoss

    s, out, s_start = stage.s, stage.out / "student", time.perf_counter()
    if stage.record["config"]["accelerate"]:
        from .accel import accelerate

        accelerate(student)
    _say(f"student: training {s['model']} for {s['epochs']} epoch(s)" + (" with distillation" if teacher is not None else ""))
    loss = TITNLoss(alpha=s["alpha"], distillation=s["distillation"], tau=s["tau"],
                    label_smoothing=s.get("label_smoothing") or 0.0)
    history = _train_stage(
        student, stage.feed(s["batch_size"]), stage.val, out=out, resume=bool(stage.args.resume), epochs=s["epochs"],
        teacher=teacher, teacher_bf16=stage.args.teacher_bf16, weight_decay=s.get("weight_decay"),
        loss=loss, optimizer=s["optimizer"], lr=s["lr"], batch_size=s["batch_size"], mixing=s["mixing"],
        mix_alpha=s["mix_alpha"], warmup_epochs=s["warmup_epochs"], compile=stage.args.compile,
        grad_clip=s.get("grad_clip"), run_info={"dataset": s["dataset"], "role": "student"}, **stage.fit_options(),
    )
    stage.record["history"] = history.to_dict()
    if history.status != "completed":
        return student, history
    stage.record["student_train_seconds"] = time.perf_counter() - s_start
    if stage.val is not None and (out / "best.pt").is_file():
        student = load_model(out / "best.pt")
    return student, history


def _finish_run(stage: _Stages, student: torch.nn.Module, teacher_kind: str, teacher_ref: Any) -> None:
    """Score the trained student on the test set and complete metrics.json."""
    from .distributed import current
    from .train import evaluate
    from .utils import save_json

    out, record, best_or_last = stage.out, stage.record, "best.pt" if stage.val is not None else "last.pt"
    row = _metrics_row(evaluate(student, stage.test, device=stage.device, all_processes=True))  # torchrun: shared out
    if current().rank != 0:  # several processes: rank 0 writes metrics.json
        return
    record.update(row)
    record["checkpoints"] = {
        "student": str(out / "student" / best_or_last),
        "teacher": (str(out / "teacher" / best_or_last) if teacher_kind == "name"
                    else {"checkpoint": str(teacher_ref), "pretrained": f"{PRETRAINED_PREFIX}{teacher_ref}"}.get(
                        teacher_kind)),
    }
    record["status"] = "completed"
    record["wall_seconds"] = time.perf_counter() - stage.start
    record["timeline"] = _timeline(record)
    save_json(out / "metrics.json", record)
    _say(_summary("student", row))
    _say(f"wall time {record['wall_seconds']:.1f} s; metrics in {out / 'metrics.json'}")


#: Exit code of a run stopped by ``--time-limit``: not finished, continue it with ``--resume``.
EXIT_SLICE = 75


def _first(*values: Any) -> Any:
    """The first value that is not ``None`` (``None`` if all are)."""
    return next((v for v in values if v is not None), None)


def _time_limit(minutes: float | None, start: float) -> list:
    """``fit`` callbacks that stop training after an epoch when another one as long would end ``minutes``
    after ``start`` or later: a slice ends within its limit whenever its epochs take about the same time."""
    if minutes is None:
        return []

    def over_time(record: dict[str, Any]) -> bool:
        return time.perf_counter() - start + float(record.get("seconds") or 0.0) >= 60.0 * minutes

    return [over_time]


def _machine() -> dict[str, Any]:
    """Where a run ran: processor, cores, and the other load on the machine when it started."""
    from .utils import cpu_name

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu_name(ids=True), "cores": os.cpu_count(), "load_1min_at_start": load,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _timeline(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The accuracy-versus-time curve of a run: every epoch of the teacher, then of the student, with

    * ``minutes``: wall-clock minutes since this command started (``None`` for epochs trained by an
      earlier slice of a resumed run), everything included: data loading, evaluations, checkpoints;
    * ``train_minutes``: the epochs' own times added up (comparable across slices);
    * ``test_top1``: where it was measured (``--track-test``).
    """
    rows, total = [], 0.0
    for stage, key in (("teacher", "teacher_history"), ("student", "history")):
        for r in (record.get(key) or {}).get("epochs", []):
            total += float(r.get("seconds") or 0.0)
            done = r.get("finished_at")
            minutes = (done - record["started_at"]) / 60.0 if isinstance(done, (int, float)) else None
            rows.append({"stage": stage, "epoch": r["epoch"],
                         "minutes": round(minutes, 3) if minutes is not None and minutes >= 0 else None,
                         "train_minutes": round(total / 60.0, 3), "test_top1": r.get("test_top1")})
    return rows


def _stopped(record: dict[str, Any], history: Any, out: Path, stage: str) -> int:
    """Record and say (under torchrun: rank 0) how a stage ended early; return the exit code."""
    from .distributed import current
    from .utils import save_json

    code = {"interrupted": 130, "stopped": EXIT_SLICE}.get(history.status, 1)
    if current().rank != 0:
        return code
    record["status"] = f"{stage} {history.status}"
    record["message"] = history.message
    save_json(out / "metrics.json", record)
    print(f"titn-edu: {stage} training {history.status}: {history.message}", file=sys.stderr)
    if code != 1:
        print(f"titn-edu: continue with: titn-edu train --resume {out}", file=sys.stderr)
    return code


def _cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .checkpoint import build_from_spec, load_checkpoint
    from .data import get_dataset, get_transforms
    from .train import evaluate
    from .utils import resolve_device, save_json

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("model") is None:
        parser.error(f"{args.checkpoint!r} does not record how to rebuild its model")
    model = build_from_spec(ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    dataset = args.dataset or ((ckpt.get("extra") or {}).get("run_info") or {}).get("dataset")
    if dataset is None:
        parser.error("--dataset is required: the checkpoint does not say which dataset it was trained on")
    device = resolve_device(args.device)
    threads = _set_threads(args.threads, device)
    data = get_dataset(dataset, train=args.split == "train", root=args.data_root, download=args.download,
                       limit=args.limit, transform=get_transforms(dataset, train=False))
    result = evaluate(model, data, batch_size=args.batch_size, device=device)
    row = _metrics_row(result)
    _say(_summary(f"{Path(args.checkpoint).name} on {dataset} {args.split} ({result['num_samples']} images)", row))
    if args.output:
        out = Path(args.output).expanduser()
        save_json(out / "metrics.json", dict(row, checkpoint=str(args.checkpoint), dataset=dataset, split=args.split,
                                             confusion_matrix=result["confusion_matrix"], device=str(device),
                                             threads=threads))
        _say(f"metrics in {out / 'metrics.json'}")
    return 0


def _cmd_data(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .data import export_dataset

    written = export_dataset(args.name, args.out, root=args.data_root, download=args.download, splits=args.splits)
    for path in written:
        _say(f"wrote {path}")
    _say(f"use it with: export TITN_EDU_DATA={Path(args.out).expanduser()}")
    return 0


def _cmd_course(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import grading

    try:
        if args.course_command == "release":
            out = grading.release(args.out, notebooks=args.notebooks, run_tests=not args.skip_tests, force=args.force)
            course = json.loads((out / "course.json").read_text())["notebooks"]
            _say(f"released {len(course)} notebook(s) into {out}: student/ to hand out, autograder/ to grade")
            return 0
        path = grading.grade(args.submissions, release_dir=args.release, out=args.out, jobs=args.jobs,
                             timeout_s=args.timeout)
        _say(f"wrote {path} (and one CSV per notebook beside it)")
        return 0
    except (FileExistsError, ImportError) as err:
        print(f"titn-edu: error: {err}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``titn-edu`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    command = {"train": _cmd_train, "evaluate": _cmd_evaluate, "data": _cmd_data, "course": _cmd_course}[args.command]
    try:
        return command(args, parser)
    except (FileNotFoundError, ValueError) as err:
        # Clear, expected problems (missing data, unreadable checkpoint, bad combination of settings):
        # the message says what to do; a traceback would only hide it.
        _error(str(err))
        return 1
    except KeyboardInterrupt:
        print("titn-edu: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:
        from .distributed import lost_a_process

        if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not lost_a_process(err):  # not a torchrun job's failure
            raise
        _error(f"another process of this job stopped, or stopped answering ({str(err).splitlines()[0][:300]}). "
               f"last.pt in the run folder holds the last complete epoch: continue with the same torchrun "
               f"command and --resume {getattr(args, 'output', None) or 'DIR'}")
        return 1


def _error(text: str) -> None:
    """``titn-edu: error: ...`` on stderr; under torchrun it names the process that says it."""
    rank, size = os.environ.get("RANK"), int(os.environ.get("WORLD_SIZE", "1"))
    who = f" (process {rank} of {size})" if size > 1 and rank is not None else ""
    print(f"titn-edu{who}: error: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
