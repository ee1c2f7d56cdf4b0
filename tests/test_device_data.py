"""Data on the device (titn_edu.device_data): batch-wise augmentation checked against the per-image path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from titn_edu import build_model, fit
from titn_edu.data import ImageArrayDataset, get_dataset, get_transforms
from titn_edu.device_data import BatchAugment, DeviceLoader, random_affine, random_shift

ROOT = Path(os.environ.get("TITN_EDU_DATA", "/nonexistent"))


def images(n: int, c: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 images (blobs, not noise), so that warps and crops move visible structure."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, c, size // 4, size // 4), generator=g).float()
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").round().to(torch.uint8)


def real(name: str, n: int) -> torch.Tensor:
    try:
        return get_dataset(name, train=False, root=ROOT, download=False, transform="raw").images[:n]
    except FileNotFoundError:
        pytest.skip(f"{name} is not under TITN_EDU_DATA={ROOT}")


def per_image(transform, batch: torch.Tensor) -> torch.Tensor:
    return torch.stack([transform(tv_tensors.Image(img)) for img in batch])


# ------------------------------------------------------------------ the pieces against torchvision
def test_random_shift_is_torchvisions_padded_crop_per_image():
    x = images(6, 3)
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [0, 8], [4, 4]])
    out = random_shift(x, 4, offsets=offsets)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        expected = TF.crop(TF.pad(x[i], [4]), dy, dx, 32, 32)
        assert torch.equal(out[i], expected), i
    assert torch.equal(random_shift(x, 4, offsets=torch.full((6, 2), 4)), x)  # the centre crop is the identity


def test_random_affine_equals_crop_then_torchvisions_affine():
    x = torch.nn.functional.pad(images(24, 1, size=28, seed=1), (2, 2, 2, 2))
    g = torch.Generator().manual_seed(0)
    params = {
        "angle": torch.empty(24).uniform_(-10, 10, generator=g),
        "translate": torch.randint(-3, 4, (24, 2), generator=g).float(),
        "scale": torch.empty(24).uniform_(0.9, 1.1, generator=g),
        "shift": torch.randint(-2, 3, (24, 2), generator=g).float(),  # (x, y)
    }
    out = random_affine(x.float(), degrees=10, translate=0.1, scale=(0.9, 1.1), params=params)
    for i in range(24):
        sx, sy = params["shift"][i].long().tolist()
        cropped = random_shift(x[i : i + 1], 2, offsets=torch.tensor([[sy + 2, sx + 2]]))
        tx, ty = params["translate"][i].long().tolist()
        expected = TF.affine(cropped, angle=float(params["angle"][i]), translate=[tx, ty], scale=float(params["scale"][i]),
                             shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST)
        assert torch.equal(out[i : i + 1], expected.float()), i


@pytest.mark.parametrize("name,c,size", [("mnist", 1, 28), ("cifar10", 3, 32), ("cifar100", 3, 32)])
@pytest.mark.parametrize("train,augment", [(False, True), (True, False)])
def test_without_augmentation_the_batch_path_equals_the_per_image_path(name, c, size, train, augment):
    x = images(10, c, size)
    expected = per_image(get_transforms(name, train=train, augment=augment), x)
    got = BatchAugment(name, train=train, augment=augment)(x)
    assert got.shape == (10, c, 32, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,c,size", [("mnist", 1, 28), ("cifar10", 3, 32)])
def test_every_image_draws_its_own_augmentation(name, c, size):
    torch.manual_seed(0)
    x = images(1, c, size).expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    out = BatchAugment(name, train=True, policy_group=1)(x)
    distinct = {tuple(o.flatten()[::7].tolist()) for o in out}
    assert len(distinct) >= 24  # the same input, (almost) all different outputs
    clean = BatchAugment(name, train=False)(x[:1])
    assert not torch.equal(out, clean.expand_as(out))


def test_seeded_batches_repeat_and_differ_between_seeds():
    x = images(16, 3)
    aug = BatchAugment("cifar10", train=True)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    torch.manual_seed(4)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_augmented_statistics_match_the_per_image_path(name):
    """Mean, spread and the share of flipped/moved content agree with the per-image transforms."""
    x = real(name, 512)
    torch.manual_seed(0)
    batch = BatchAugment(name, train=True)(x)
    torch.manual_seed(0)
    single = per_image(get_transforms(name, train=True), x)
    for stat in (lambda t: t.mean(), lambda t: t.std(), lambda t: (t - per_image(get_transforms(name, train=False), x)).abs().mean()):
        a, b = float(stat(batch)), float(stat(single))
        assert abs(a - b) <= 0.06 + 0.06 * abs(b), (a, b)


def test_batch_augment_rejects_bad_batches():
    aug = BatchAugment("cifar10", train=True)
    with pytest.raises(ValueError, match="uint8 batch"):
        aug(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="3 channel"):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="32x32"):
        BatchAugment("cifar10", train=False)(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="28x28"):  # before any work is done on the batch
        BatchAugment("mnist", train=True)(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="square"):
        random_affine(torch.zeros(1, 1, 32, 28), degrees=10, translate=0.1, scale=(0.9, 1.1))
    with pytest.raises(ValueError, match="policy_group"):
        BatchAugment("cifar10", train=True, policy_group=0)
    with pytest.raises(ValueError, match="unknown dataset|mnist"):
        BatchAugment("imagenet", train=True)


# ------------------------------------------------------------------ the loader
def dataset(n: int = 50, name: str = "cifar10") -> ImageArrayDataset:
    c, size = (1, 28) if name == "mnist" else (3, 32)
    return ImageArrayDataset(images(n, c, size), torch.arange(n) % 10, [str(i) for i in range(10)])


def test_loader_covers_every_image_once_per_epoch_and_drops_the_last_partial_batch():
    ds = dataset(50)
    loader = DeviceLoader(ds, "cifar10", batch_size=16, train=True, device="cpu", seed=0)
    assert len(loader) == 3 and "batches=3" in repr(loader)
    epoch1 = [(x, y) for x, y in loader]
    assert [x.shape for x, _ in epoch1] == [(16, 3, 32, 32)] * 3
    labels = torch.cat([y for _, y in epoch1])
    assert labels.dtype == torch.int64 and len(labels) == 48
    epoch2 = torch.cat([y for _, y in loader])
    assert not torch.equal(labels, epoch2)  # reshuffled


def test_test_loader_is_in_order_and_equals_the_per_image_path():
    ds = dataset(20, "mnist")
    loader = DeviceLoader(ds, "mnist", batch_size=8, train=False, device="cpu")
    assert len(loader) == 3
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(ys), ds.targets)
    torch.testing.assert_close(torch.cat(xs), per_image(get_transforms("mnist", train=False), ds.images))


def test_loader_rejects_bad_input():
    with pytest.raises(TypeError, match="ImageArrayDataset"):
        DeviceLoader(torch.zeros(2, 3, 32, 32), "cifar10", batch_size=2, train=True, device="cpu")
    with pytest.raises(ValueError, match="channel"):
        DeviceLoader(dataset(10, "mnist"), "cifar10", batch_size=2, train=True, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(dataset(10), "cifar10", batch_size=0, train=True, device="cpu")


def test_fit_trains_from_a_device_loader():
    torch.manual_seed(0)
    model = build_model("titn-tiny", num_classes=10, depth=1, outer_dim=16, inner_dim=4, patch_size=16, pixel_size=8)
    train = DeviceLoader(dataset(40), "cifar10", batch_size=8, train=True, device="cpu", seed=0)
    val = DeviceLoader(dataset(16), "cifar10", batch_size=8, train=False, device="cpu")
    history = fit(model, train, val, epochs=2, progress=False, device="cpu", lr=1e-3)
    assert history.status == "completed" and len(history) == 2
    assert history[-1]["val_top1"] is not None and history[0]["train_loss"] > 0


@pytest.mark.parametrize("name,c,size", [("mnist", 1, 28), ("cifar10", 3, 32)])
def test_crop_flip_batches_are_shifted_and_flipped_copies_of_the_plain_batch(name, c, size):
    """Every crop-flip image is the plain image moved by whole pixels (and, for CIFAR, maybe mirrored)."""
    x = images(16, c, size)
    torch.manual_seed(0)
    out = BatchAugment(name, train=True, augment="crop-flip")(x)
    plain = BatchAugment(name, train=False)(x)
    pad = 2 if name == "mnist" else 4
    zero = BatchAugment(name, train=False)(torch.zeros_like(x[:1]))[0]
    for got, ref in zip(out, plain):
        framed = torch.nn.functional.pad(ref - zero, (pad, pad, pad, pad)) + zero[:, :1, :1]
        candidates = [framed[:, dy:dy + 32, dx:dx + 32] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        if name != "mnist":
            candidates += [cand.flip(-1) for cand in candidates]
        assert any(torch.allclose(got, cand, atol=1e-5) for cand in candidates)
    assert not torch.allclose(out, plain)
    assert repr(BatchAugment(name, train=True, augment="crop-flip")).endswith("augment='crop-flip')")
