#!/usr/bin/env python
"""Every GPU path of the project checked in about a minute, and the step times that size the real run.

    python scripts/gpu_smoke.py --json OUT/smoke.json --sizing runs/gpu/sizing.json --budget 400
    python scripts/gpu_smoke.py --device cpu --quick --json smoke.json       # the same checks, tiny, on a CPU

The checks use the settings of a training preset (default ``gpu-cifar10``: its models, batch sizes,
optimisers, augmentation, loss) on random images (step times do not depend on what the pixels show).
Each is timed; one failing does not stop the others; the exit status is 1 if any failed.

1. ``environment``: torch, the device, bf16 support;
2. ``bf16``: the student's forward and backward under bf16 autocast: finite loss and gradients, logits
   within 5 % (relative norm) of float32;
3. ``compile``: ``torch.compile`` of the student with two blocks gives the eager logits (quick to compile;
   the full student's training step is compiled in check 6);
4. ``device_data``: a ``DeviceLoader`` with the preset's augmentation: shape, dtype, device, finite values;
5. ``teacher``: two short epochs of ``fit`` for the teacher (channels-last, bf16 autocast), then
   ``teacher_logits`` in bf16;
6. ``student``: two short epochs of ``fit`` for the student distilled from that teacher, compiled, with
   CutMix, the test set scored and checkpoints written, as ``titn-edu train`` runs it;
7. ``checkpoint``: ``last.pt`` loads back (``load_model``, weights only) with the same outputs, and
   ``fit`` resumes from it;
8. ``sizing``: the teacher and student epochs that fit a ``reproduce_cifar10.py --budget`` slice of
   ``--budget`` seconds (:func:`size_run` on its time limit); ``--sizing FILE`` keeps the step times
   for ``reproduce_cifar10.py --sizing FILE``, which sizes the run again for its own budget.

``--quick``: tiny models and sizes, and ``torch.compile``'s ``eager`` backend (graph capture without code
generation), so that a CPU runs every check in seconds (``tests/test_gpu_run.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from titn_edu.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from titn_edu.data import ImageArrayDataset  # noqa: E402
from titn_edu.device_data import DeviceLoader  # noqa: E402
from titn_edu.losses import TITNLoss  # noqa: E402
from titn_edu.model import build_model  # noqa: E402
from titn_edu.presets import get_preset  # noqa: E402
from titn_edu.teachers import build_teacher, freeze, teacher_logits  # noqa: E402
from titn_edu.train import build_optimizer, fit  # noqa: E402

#: What the real run trains on (CIFAR-10): images per epoch and test images.
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


# ----------------------------------------------------------------------------- sizing
def size_run(m: dict[str, float], *, budget: float, settings: dict[str, Any], train_images: int = TRAIN_IMAGES,
             start_seconds: float = 30.0, teacher_share: float = 0.15, safety: float = 0.85,
             max_epochs: int = 600) -> dict[str, Any]:
    """The epochs of teacher and student that fit ``budget`` seconds of ``titn-edu train``, from step times.

    ``m`` holds seconds: ``teacher_step``, ``teacher_eval`` (one test pass), ``student_step``,
    ``student_eval``, ``compile`` (the student's first steps beyond their share) and ``checkpoint`` (one
    ``last.pt``). With ``n`` the steps of an epoch (``train_images // batch``: full batches only)::

        teacher epoch = n_t · teacher_step + teacher_eval
        student epoch = n_s · student_step + student_eval + 2 · checkpoint / save_every   (last.pt, best.pt)
        fixed         = start_seconds + compile + 3 · student_eval                        (start, final scores)
        teacher epochs = min(the preset's, ⌊teacher_share · budget / teacher epoch⌋), at least 1
        student epochs = ⌊safety · (budget − fixed − teacher epochs · teacher epoch) / student epoch⌋,
                         between 1 and max_epochs
    """
    t_batch = settings.get("teacher_batch_size") or settings["batch_size"]
    n_t, n_s = train_images // t_batch, train_images // settings["batch_size"]
    teacher_epoch = n_t * m["teacher_step"] + m["teacher_eval"]
    student_epoch = (n_s * m["student_step"] + m["student_eval"]
                     + 2 * m["checkpoint"] / (settings.get("save_every") or 1))
    fixed = start_seconds + m["compile"] + 3 * m["student_eval"]
    teacher_epochs = max(1, min(settings["teacher_epochs"], math.floor(teacher_share * budget / teacher_epoch)))
    left = budget - fixed - teacher_epochs * teacher_epoch
    epochs = max(1, min(max_epochs, math.floor(safety * left / student_epoch)))
    kept = {k: settings.get(k) for k in ("batch_size", "teacher_batch_size", "teacher_epochs", "save_every")}
    return {"teacher_epochs": teacher_epochs, "epochs": epochs, "budget_seconds": budget, "settings": kept,
            "teacher_epoch_seconds": teacher_epoch, "student_epoch_seconds": student_epoch,
            "fixed_seconds": fixed, "expected_seconds": fixed + teacher_epochs * teacher_epoch + epochs * student_epoch,
            "measured": dict(m), "train_images": train_images, "safety": safety, "teacher_share": teacher_share}


# ----------------------------------------------------------------------------- the run's pieces
class Smoke:
    """The models, data and settings the checks share, and what they measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.quick, self.backend = args.quick, ("eager" if args.quick else "inductor")
        self.compile = not (args.quick or args.no_compile)  # the student's training step in check 6
        self.s = get_preset(args.preset)
        if self.quick:  # tiny sizes: every check in seconds on a CPU
            self.s.update(model="titn-tiny", model_args=dict(depth=1), teacher_args=dict(self.s["teacher_args"], width=4),
                          batch_size=16, teacher_batch_size=16, policy_group=4)
        self.batches = 3 if self.quick else 12  # steps per calibration epoch
        self.test_images = 32 if self.quick else TEST_IMAGES
        self.folder = Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
        self.measured: dict[str, float] = {}
        self.teacher: torch.nn.Module | None = None
        self.student: torch.nn.Module | None = None

    def student_model(self) -> torch.nn.Module:
        return build_model(self.s["model"], num_classes=10, **self.s["model_args"])

    @property
    def depth(self) -> int:
        return self.student_model().config["depth"]

    def images(self, n: int, seed: int) -> ImageArrayDataset:
        g = torch.Generator().manual_seed(seed)
        return ImageArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                                 torch.randint(0, 10, (n,), generator=g), [f"c{i}" for i in range(10)])

    def loader(self, n: int, batch: int, *, train: bool, augment: Any = None, seed: int = 0) -> DeviceLoader:
        return DeviceLoader(self.images(n, seed), "cifar10", batch_size=batch, train=train, device=self.device,
                            augment=self.s["augment"] if augment is None else augment,
                            policy_group=self.s.get("policy_group") or 8)

    def test_loader(self) -> DeviceLoader:
        return self.loader(self.test_images, max(self.s["batch_size"], 256), train=False, seed=1)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


# ----------------------------------------------------------------------------- the checks
def check_environment(run: Smoke) -> dict[str, Any]:
    on_gpu = run.device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: torch.cuda.is_available() is False")
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(run.device) if on_gpu else "cpu",
            "capability": list(torch.cuda.get_device_capability(run.device)) if on_gpu else None,
            "bf16": torch.cuda.is_bf16_supported() if on_gpu else True}


def check_bf16(run: Smoke) -> dict[str, Any]:
    model = run.student_model().to(run.device)
    images = torch.randn(32, 3, 32, 32, device=run.device)
    labels = torch.randint(0, 10, (32,), device=run.device)
    model.train()
    with torch.autocast(run.device.type, dtype=torch.bfloat16):
        class_logits, distill_logits = model(images)
        loss = F.cross_entropy(class_logits.float(), labels) + F.cross_entropy(distill_logits.float(), labels)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    if not math.isfinite(loss.item()) or bad:
        raise RuntimeError(f"loss {loss.item()}, parameters without finite gradients: {bad[:5]}")
    model.eval()
    with torch.no_grad():
        exact = model(images)
        with torch.autocast(run.device.type, dtype=torch.bfloat16):
            low = model(images)
    error = _relative(low, exact)
    if error > 0.05:
        raise RuntimeError(f"bf16 logits differ from float32 by {error:.3f} (relative norm; allowed 0.05)")
    return {"loss": loss.item(), "bf16_vs_fp32": error, "dtype": str(class_logits.dtype)}


def check_compile(run: Smoke) -> dict[str, Any]:
    model = build_model(run.s["model"], num_classes=10, **{**run.s["model_args"], "depth": min(2, run.depth)})
    model = model.to(run.device).eval()
    compiled = torch.compile(model, backend=run.backend)
    images = torch.randn(64, 3, 32, 32, device=run.device)
    with torch.no_grad():
        error = _relative(compiled(images), model(images))
    if error > 1e-3:
        raise RuntimeError(f"compiled logits differ from eager by {error:.2e} (relative norm; allowed 1e-3)")
    return {"backend": run.backend, "compiled_vs_eager": error}


def check_device_data(run: Smoke) -> dict[str, Any]:
    batch = run.s["batch_size"]
    loader = run.loader(batch * 4, batch, train=True)
    run.sync()
    start = time.perf_counter()
    batches = list(loader)
    run.sync()
    seconds = (time.perf_counter() - start) / len(batches)
    images, labels = batches[0]
    if (images.dtype, tuple(images.shape), images.device.type) != (torch.float32, (batch, 3, 32, 32), run.device.type):
        raise RuntimeError(f"batch {images.dtype} {tuple(images.shape)} on {images.device}")
    if not torch.isfinite(images).all() or labels.dtype != torch.long or int(labels.max()) > 9:
        raise RuntimeError("non-finite pixels or labels out of range")
    return {"batch_ms": 1000 * seconds, "augment": repr(loader.transform)}


def _epoch_times(history: Any, steps: int) -> tuple[float, float, float]:
    """(seconds of a step, of the test pass, beyond the steps in the first epoch) from a two-epoch history."""
    first, second = history[0], history[1]
    step = second["train_seconds"] / steps
    return step, second["seconds"] - second["train_seconds"], max(0.0, first["train_seconds"] - second["train_seconds"])


def check_teacher(run: Smoke) -> dict[str, Any]:
    s = run.s
    batch = s.get("teacher_batch_size") or s["batch_size"]
    teacher = build_teacher(s["teacher"], num_classes=10, **s["teacher_args"])
    history = fit(teacher, run.loader(batch * run.batches, batch, train=True, augment=s.get("teacher_augment")),
                  epochs=2, optimizer=s["teacher_optimizer"], lr=s["teacher_lr"], batch_size=batch,
                  loss=TITNLoss(label_smoothing=s.get("teacher_label_smoothing") or 0.0),
                  weight_decay=s["teacher_weight_decay"], mixing="none", device=run.device, progress=False,
                  test_data=run.test_loader(), warmup_epochs=s.get("teacher_warmup_epochs"))
    step, test_pass, _ = _epoch_times(history, run.batches)
    run.measured.update(teacher_step=step, teacher_eval=test_pass)
    run.teacher = freeze(teacher)
    images = torch.randn(batch, 3, 32, 32, device=run.device)
    logits = teacher_logits(run.teacher, images, bf16=run.device.type == "cuda")
    if logits.shape != (batch, 10) or not torch.isfinite(logits).all():
        raise RuntimeError(f"teacher logits {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}")
    return {"status": history.status, "step_ms": 1000 * step, "test_pass_s": test_pass,
            "images_per_s": batch / step, "train_loss": history[-1]["train_loss"]}


def _student_fit(run: Smoke, student: torch.nn.Module, epochs: int, **extra: Any) -> Any:
    s, batch = run.s, run.s["batch_size"]
    loss = TITNLoss(alpha=s["alpha"], distillation=s["distillation"], tau=s["tau"],
                    label_smoothing=s.get("label_smoothing") or 0.0)
    return fit(student, run.loader(batch * run.batches, batch, train=True, seed=2), epochs=epochs,
               teacher=run.teacher, loss=loss, optimizer=s["optimizer"], lr=s["lr"], batch_size=batch,
               weight_decay=s.get("weight_decay"), mixing=s["mixing"], mix_alpha=s["mix_alpha"],
               warmup_epochs=s["warmup_epochs"], grad_clip=s.get("grad_clip"), device=run.device, progress=False,
               test_data=run.test_loader(), output_dir=run.folder / "student", **extra)


def check_student(run: Smoke) -> dict[str, Any]:
    if run.teacher is None:
        raise RuntimeError("needs the teacher check")
    student = run.student_model()
    history = _student_fit(run, student, 2, compile=run.compile)
    if history.status != "completed":
        raise RuntimeError(f"fit ended {history.status}: {history.message}")
    step, test_pass, compile_s = _epoch_times(history, run.batches)
    run.measured.update(student_step=step, student_eval=test_pass, compile=compile_s)
    run.student = student
    batch = run.s["batch_size"]
    return {"compiled": run.compile, "step_ms": 1000 * step, "images_per_s": batch / step,
            "test_pass_s": test_pass, "first_epoch_extra_s": compile_s,
            "teacher_agreement": history[-1]["teacher_agreement"], "train_loss": history[-1]["train_loss"]}


def check_checkpoint(run: Smoke) -> dict[str, Any]:
    if run.student is None:
        raise RuntimeError("needs the student check")
    last = run.folder / "student" / "last.pt"
    images = torch.randn(16, 3, 32, 32, device=run.device)
    loaded = load_model(last).to(run.device).eval()
    with torch.no_grad():
        difference = float((loaded(images) - run.student.eval()(images)).abs().max())
    saved = load_checkpoint(last)
    if difference > 1e-5 or saved["epoch"] != 2 or saved.get("optimizer") is None:
        raise RuntimeError(f"reloaded outputs differ by {difference}, epoch {saved['epoch']}")
    optimizer = build_optimizer(run.student, run.s["optimizer"])
    optimizer.load_state_dict(saved["optimizer"])  # the real size of what last.pt holds
    start = time.perf_counter()
    save_checkpoint(run.folder / "timed.pt", run.student, optimizer=optimizer, epoch=2)
    run.measured["checkpoint"] = time.perf_counter() - start
    resumed = _student_fit(run, run.student_model(), 3, resume=run.folder / "student")
    if len(resumed) != 3 or resumed.status != "completed":
        raise RuntimeError(f"resume gave {len(resumed)} epochs, {resumed.status}")
    return {"max_difference": difference, "save_s": run.measured["checkpoint"],
            "size_mb": last.stat().st_size / 1e6, "resumed_epochs": len(resumed)}


def run_checks(run: Smoke, checks: list[tuple[str, Callable[[Smoke], dict]]]) -> dict[str, Any]:
    """Each check in turn, timed; a failure is recorded with its error and the next check runs."""
    results = {}
    for name, check in checks:
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **check(run)}
        except Exception as err:  # noqa: BLE001 - a smoke test reports every failure and goes on
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc(limit=6)}
        results[name]["seconds"] = time.perf_counter() - start
        print(f"{name:12s} {'ok' if results[name]['ok'] else 'FAILED':6s} {results[name]['seconds']:7.1f} s  "
              f"{results[name].get('error', '')}", flush=True)
    return results


CHECKS = [("environment", check_environment), ("bf16", check_bf16), ("compile", check_compile),
          ("device_data", check_device_data), ("teacher", check_teacher), ("student", check_student),
          ("checkpoint", check_checkpoint)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes, compile's eager backend")
    p.add_argument("--no-compile", action="store_true", help="train the student without torch.compile (check 6)")
    p.add_argument("--preset", default="gpu-cifar10", help="the training preset measured (default gpu-cifar10)")
    p.add_argument("--budget", type=float, default=400.0,
                   help="seconds of the timed run to size, as reproduce_cifar10.py --budget (default 400)")
    p.add_argument("--json", type=Path, help="write the verdict, every check and the sizing here")
    p.add_argument("--sizing", type=Path, help="also write the sizing and its step times here "
                   "(for reproduce_cifar10.py --sizing)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be positive; got {args.budget}")
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # as titn-edu train on CUDA
    run = Smoke(args)
    results = run_checks(run, CHECKS)
    report: dict[str, Any] = {"preset": args.preset, "quick": args.quick, "device": args.device, "checks": results}
    try:
        from reproduce_cifar10 import time_limit  # beside this script: what titn-edu train gets of the budget

        report["sizing"] = size_run(run.measured, budget=time_limit(args.budget), settings=run.s)
    except KeyError as err:
        report["sizing"] = None
        results["sizing"] = {"ok": False, "error": f"not measured: {err} (a check above failed)", "seconds": 0.0}
    else:
        results["sizing"] = {"ok": True, "seconds": 0.0, **{k: report["sizing"][k] for k in ("teacher_epochs", "epochs")}}
        print(f"sizing: {json.dumps({k: v for k, v in report['sizing'].items() if k != 'measured'})}")
    report["verdict"] = "pass" if all(r["ok"] for r in results.values()) else "fail"
    for path, data in ((args.json, report), (args.sizing, report["sizing"])):
        if path is not None and data is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"verdict: {report['verdict']}")
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
