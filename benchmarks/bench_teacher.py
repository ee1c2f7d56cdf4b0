"""How fast does the small CPU teacher learn MNIST? Train ``cnn-small`` for a few epochs, report accuracy and time.

Usage (from the repository root, offline data under ``TITN_EDU_DATA``)::

    python benchmarks/bench_teacher.py                      # 1 epoch, width 16, paper augmentations
    python benchmarks/bench_teacher.py --width 16 --no-augment --epochs 2

The loop is deliberately minimal (SGD + Nesterov momentum, one-cycle schedule); the package's training
engine is the real thing. Wall-clock figures depend on the machine and its load: report them with both.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from titn_edu import count_parameters
from titn_edu.data import get_dataset, get_transforms, make_loader
from titn_edu.teachers import build_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--teacher", default="cnn-small")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="class-balanced training subset")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = get_dataset(args.dataset, train=True, limit=args.limit,
                        transform=get_transforms(args.dataset, train=True, augment=args.augment))
    test = get_dataset(args.dataset, train=False)
    in_chans = train.images.shape[1]
    kwargs = {"width": args.width} if args.teacher == "cnn-small" else {}
    model = build_teacher(args.teacher, num_classes=train.num_classes, in_chans=in_chans, **kwargs)
    train_loader = make_loader(train, batch_size=args.batch_size, train=True, num_workers=args.workers, seed=args.seed)
    test_loader = make_loader(test, batch_size=512, train=False)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * len(train_loader))
    print(f"{args.teacher} (width {args.width}): {count_parameters(model):,} parameters; {len(train):,} training "
          f"images, augment={args.augment}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.workers} loader worker(s)")

    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        print(f"epoch {epoch + 1}: last loss {loss.item():.3f}, test accuracy {correct / len(test):.2%}, "
              f"training time so far {train_s:.1f} s wall, {cpu_s:.1f} s CPU (this process)")


if __name__ == "__main__":
    main()
