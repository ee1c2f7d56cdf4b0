"""The teacher's forward pass in distillation, each speed choice of ``teacher_logits`` measured alone.

Usage (from the repository root)::

    python benchmarks/teacher_path.py                       # cnn-small and vgg16_bn, batch 128, CPU
    python benchmarks/teacher_path.py --device cuda --batch 1024
    python benchmarks/teacher_path.py --train               # training the teacher: NCHW vs channels-last

For each teacher, the variants run round by round in one process (so machine load hits them alike):

* ``no_grad``: ``teacher(images)`` under ``torch.no_grad()`` (what ``fit`` did before);
* ``inference``: under ``torch.inference_mode()``;
* ``inference+CL``: and the weights and images channels-last (``to_channels_last``);
* ``inference+CL+bf16``: and bf16 autocast (``teacher_logits(..., bf16=True)``).

With ``--train``: one SGD training step (forward, cross-entropy, backward, update) with the weights
and images in the default layout (NCHW) against channels-last, as ``fit`` trains a CNN.

Prints the median milliseconds per batch over the rounds, the speed-up over ``no_grad``, the largest
logit difference from ``no_grad`` and how many hard labels (argmax) agree with it. The teachers have
random weights with non-trivial BatchNorm statistics (a trained teacher's labels are no closer to ties).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from titn_edu.teachers import build_teacher, freeze, teacher_logits, to_channels_last
from titn_edu.utils import resolve_device


def _teacher(name: str, in_chans: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = freeze(build_teacher(name, num_classes=10, in_chans=in_chans))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", nargs="+", default=["cnn-small", "vgg16_bn"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--train", action="store_true", help="time a training step, NCHW against channels-last")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {dev}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"{args.rounds} rounds (median ms per batch)")
    if args.train:
        _train_steps(args, dev)
        return
    print("| teacher | variant | ms per batch | speed-up | max abs logit diff | same argmax |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.teachers:
        in_chans = 1 if name == "cnn-small" else 3
        plain = _teacher(name, in_chans, dev)
        fast = _teacher(name, in_chans, dev)
        to_channels_last(fast)
        images = torch.randn(args.batch, in_chans, 32, 32, device=dev)

        def no_grad() -> torch.Tensor:
            with torch.no_grad():
                return plain(images)

        def inference() -> torch.Tensor:
            return teacher_logits(plain, images)

        variants = {
            "no_grad": no_grad,
            "inference": inference,
            "inference+CL": lambda: teacher_logits(fast, images),
            "inference+CL+bf16": lambda: teacher_logits(fast, images, bf16=True),
        }
        reference = no_grad()
        outputs = {k: f() for k, f in variants.items()}  # also the warm-up
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, f in variants.items():
                _sync(dev)
                t = time.perf_counter()
                f()
                _sync(dev)
                times[k].append((time.perf_counter() - t) * 1e3)
        base = statistics.median(times["no_grad"])
        for k in variants:
            ms = statistics.median(times[k])
            diff = (outputs[k].float() - reference).abs().max().item()
            agree = (outputs[k].argmax(-1) == reference.argmax(-1)).float().mean().item() * 100
            print(f"| {name} | {k} | {ms:.1f} | {base / ms:.2f}x | {diff:.1e} | {agree:.1f} % |")


def _train_steps(args: argparse.Namespace, dev: torch.device) -> None:
    print("| teacher | layout | ms per training step | speed-up | max abs loss diff after 3 steps |")
    print("|---|---|---:|---:|---:|")
    for name in args.teachers:
        in_chans = 1 if name == "cnn-small" else 3
        g = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, in_chans, 32, 32, generator=g).to(dev)
        labels = torch.randint(0, 10, (args.batch,), generator=g).to(dev)
        runs = {}
        for layout in ("NCHW", "channels-last"):
            torch.manual_seed(0)
            model = build_teacher(name, num_classes=10, in_chans=in_chans).to(dev)
            x = images
            if layout == "channels-last":
                to_channels_last(model)
                x = images.contiguous(memory_format=torch.channels_last)
            runs[layout] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x)

        def step(layout: str) -> float:
            model, opt, x = runs[layout]
            loss = F.cross_entropy(model(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        losses = {k: [step(k) for _ in range(3)] for k in runs}  # warm-up, and the same start for both
        diff = max(abs(a - b) for a, b in zip(losses["NCHW"], losses["channels-last"]))
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k in runs:
                _sync(dev)
                t = time.perf_counter()
                step(k)
                _sync(dev)
                times[k].append((time.perf_counter() - t) * 1e3)
        base = statistics.median(times["NCHW"])
        for k in runs:
            ms = statistics.median(times[k])
            print(f"| {name} | {k} | {ms:.1f} | {base / ms:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
