"""Per-image transform cost: why ImageArrayDataset runs its transforms on one thread.

Usage (from the repository root, offline data under ``TITN_EDU_DATA``)::

    python benchmarks/bench_data.py

For each dataset, times the standard training and test transforms on single uint8 images, once with
torch's default number of intra-op threads and once with one thread, then the throughput of a
``make_loader`` epoch over 2,000 images (``num_workers=0``). Figures depend on the machine and its load.
"""

from __future__ import annotations

import time

import torch
from torchvision import tv_tensors

from titn_edu.data import DATASETS, get_dataset, get_transforms, make_loader


def per_image_us(transform, images, repeat: int = 200) -> float:
    for i in range(10):
        transform(tv_tensors.Image(images[i]))
    start = time.perf_counter()
    for i in range(repeat):
        transform(tv_tensors.Image(images[i % len(images)]))
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    threads = torch.get_num_threads()
    print(f"torch intra-op threads by default: {threads}")
    for name in DATASETS:
        try:
            raw = get_dataset(name, train=False, transform="raw")
        except FileNotFoundError:
            print(f"{name}: no data, skipped")
            continue
        images = raw.images[:256]
        for split in ("train", "test"):
            transform = get_transforms(name, train=split == "train")
            torch.set_num_threads(threads)
            default = per_image_us(transform, images)
            torch.set_num_threads(1)
            one = per_image_us(transform, images)
            torch.set_num_threads(threads)
            print(f"{name:8s} {split:5s} transform: {default:8.0f} µs/image with {threads} threads, "
                  f"{one:6.0f} µs/image with 1 thread")
        ds = get_dataset(name, train=False, limit=2000)
        ds.transform = get_transforms(name, train=True)
        start = time.perf_counter()
        n = sum(len(y) for _, y in make_loader(ds, batch_size=128, train=True))
        print(f"{name:8s} augmented loader (num_workers=0): {n / (time.perf_counter() - start):,.0f} images/s")


if __name__ == "__main__":
    main()
