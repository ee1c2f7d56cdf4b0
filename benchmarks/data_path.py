"""Training-data throughput: per-image transforms in a DataLoader against DeviceLoader's batch augmentation.

Usage (from the repository root, offline data under ``TITN_EDU_DATA``)::

    python benchmarks/data_path.py                          # CPU, batch 128 and 1024, MNIST and CIFAR-10
    python benchmarks/data_path.py --device cuda --workers 8

For each dataset's training split (the paper's augmentations) it times, one after the other, one
pass over ``--images`` images with

* ``DataLoader``: ``make_loader`` over ``get_dataset(name, train=True)`` (per-image
  ``torchvision.transforms.v2``, ``--workers`` worker processes), batches moved to the device;
* ``DeviceLoader``: the uint8 split on the device, each batch augmented there (``BatchAugment``);

and prints images per second and their ratio. On a GPU, the DeviceLoader figure is what a training
step can consume without waiting; compare it with the model's images per second
(``benchmarks/throughput.py``).
"""

from __future__ import annotations

import argparse
import time

import torch

from titn_edu.data import get_dataset, make_loader
from titn_edu.device_data import DeviceLoader
from titn_edu.utils import resolve_device


def _rate(loader, device: torch.device, limit: int) -> float:
    seen = 0
    start = time.perf_counter()
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        seen += images.shape[0]
        if seen >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--images", type=int, default=4096, help="images per measured pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {dev}, {torch.get_num_threads()} thread(s), "
          f"DataLoader workers {args.workers}, {args.images} images per pass")
    print("| dataset | batch | DataLoader img/s | DeviceLoader img/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in args.datasets:
        try:
            per_image = get_dataset(name, train=True)
        except FileNotFoundError as err:
            print(f"{name}: skipped ({str(err).splitlines()[0]})")
            continue
        raw = get_dataset(name, train=True, transform="raw")
        for batch in args.batch:
            torch.manual_seed(0)
            loader = make_loader(per_image, batch_size=batch, train=True, num_workers=args.workers, seed=0,
                                 pin_memory=dev.type == "cuda")
            on_device = DeviceLoader(raw, name, batch_size=batch, train=True, device=dev, seed=0)
            _rate(on_device, dev, batch)  # warm-up (first kernels, caches)
            a = _rate(loader, dev, args.images)
            b = _rate(on_device, dev, args.images)
            print(f"| {name} | {batch} | {a:,.0f} | {b:,.0f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
