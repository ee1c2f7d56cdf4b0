"""Datasets, transforms, batch mixing and export (titn_edu.data; paper §3.3–3.4, §3.5.2)."""

from __future__ import annotations

import http.client
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from titn_edu import data

ROOT = Path(os.environ.get("TITN_EDU_DATA", "/nonexistent"))


_CACHE: dict[tuple[str, str], data.ImageArrayDataset] = {}


def raw(name: str, split: str) -> data.ImageArrayDataset:
    """Each real split is read once per test session (CIFAR-10 train is 150 MB)."""
    if (name, split) not in _CACHE:
        try:
            _CACHE[name, split] = data.get_dataset(name, train=split == "train", root=ROOT, download=False,
                                                   transform="raw")
        except FileNotFoundError:
            pytest.skip(f"{name} {split} is not under TITN_EDU_DATA={ROOT}")
    return _CACHE[name, split]


def fake_root(tmp_path: Path, name: str = "cifar10", split: str = "train", n_per_class: int = 3) -> Path:
    """A tiny data root in the offline npz format."""
    k = data.NUM_CLASSES[name]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k, dtype=np.int64), n_per_class)
    c = data.IN_CHANS[name]
    size = 28 if name == "mnist" else 32
    images = rng.integers(0, 256, size=(len(labels), size, size, c), dtype=np.uint8)
    folder = tmp_path / f"{name}-npz"
    folder.mkdir(parents=True)
    np.savez(folder / f"{name}_{split}.npz", images=images, labels=labels,
             classes=np.array([f"class{i}" for i in range(k)]))
    return tmp_path


# ----------------------------------------------------------------------------------------------
# Real data: shapes, dtypes, ranges, class counts, statistics
# ----------------------------------------------------------------------------------------------

SPLITS = [  # name, split, N, raw (C, H, W), images per class (None: unequal)
    ("mnist", "train", 60_000, (1, 28, 28), None),
    ("mnist", "test", 10_000, (1, 28, 28), None),
    ("cifar10", "train", 50_000, (3, 32, 32), 5000),
    ("cifar10", "test", 10_000, (3, 32, 32), 1000),
    ("cifar100", "test", 10_000, (3, 32, 32), 100),
]


@pytest.mark.parametrize("name,split,n,chw,per_class", SPLITS)
def test_real_split_shapes_dtypes_and_labels(name, split, n, chw, per_class):
    ds = raw(name, split)
    assert len(ds) == n and ds.images.shape == (n, *chw) and ds.images.dtype == torch.uint8
    assert ds.targets.dtype == torch.long and ds.targets.shape == (n,)
    assert len(ds.classes) == data.NUM_CLASSES[name] and all(isinstance(c, str) for c in ds.classes)
    counts = torch.bincount(ds.targets, minlength=len(ds.classes))
    assert counts.min() > 0 and counts.sum() == n
    if per_class is not None:
        assert (counts == per_class).all()
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == chw and isinstance(label, int)
    assert int(ds.images.max()) > 200  # real pixels on the 0…255 scale


@pytest.mark.parametrize("name,split", [(s[0], s[1]) for s in SPLITS])
def test_standard_transforms_give_normalised_float32_32x32(name, split):
    base = raw(name, split)
    ds = data.ImageArrayDataset(base.images[:64], base.targets[:64], base.classes,
                                data.get_transforms(name, train=split == "train"))
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    assert xs.dtype == torch.float32 and xs.shape == (64, data.IN_CHANS[name], 32, 32)
    assert type(xs) is torch.Tensor and torch.isfinite(xs).all()
    mean, std = torch.tensor(data.MEAN[name]), torch.tensor(data.STD[name])
    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert (xs >= lo.view(-1, 1, 1) - 1e-5).all() and (xs <= hi.view(-1, 1, 1) + 1e-5).all()
    if split == "test":  # exactly pad + normalise
        padded = F.pad(base.images[:64].float() / 255, (2, 2, 2, 2)) if name == "mnist" else base.images[:64] / 255
        torch.testing.assert_close(xs, (padded - mean.view(-1, 1, 1)) / std.view(-1, 1, 1))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_mean_and_std_are_the_training_statistics(name):
    images = raw(name, "train").images
    for c in range(images.shape[1]):  # exact moments from the 256-bin histogram of each channel
        hist = torch.bincount(images[:, c].flatten().int(), minlength=256).double()
        values = torch.arange(256, dtype=torch.float64) / 255
        mean = (hist * values).sum() / hist.sum()
        std = ((hist * (values - mean) ** 2).sum() / (hist.sum() - 1)).sqrt()
        assert abs(mean - data.MEAN[name][c]) < 2e-4 and abs(std - data.STD[name][c]) < 2e-4


def test_default_root_comes_from_the_environment_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TITN_EDU_DATA", str(tmp_path / "a"))
    assert data.data_root() == tmp_path / "a"
    assert data.data_root(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("TITN_EDU_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.data_root() == tmp_path / "cache" / "titn_edu" / "data"


def test_default_root_is_used_by_get_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("TITN_EDU_DATA", str(fake_root(tmp_path)))
    ds = data.get_dataset("cifar10", train=True, download=False, transform="raw")
    assert len(ds) == 30 and ds.classes[0] == "class0"
    with pytest.raises(FileNotFoundError, match="data root from TITN_EDU_DATA") as info:
        data.get_dataset("cifar10", train=False, download=False)
    assert str(tmp_path / "cifar10-npz" / "cifar10_test.npz") in str(info.value)


# ----------------------------------------------------------------------------------------------
# Missing data and bad arguments
# ----------------------------------------------------------------------------------------------


def test_cifar100_train_missing_names_everything_searched():
    if not ROOT.is_dir() or (ROOT / "cifar100-npz" / "cifar100_train.npz").exists():
        pytest.skip("needs the offline root without CIFAR-100's training split")
    with pytest.raises(FileNotFoundError) as info:
        data.get_dataset("cifar100", train=True, root=ROOT, download=False)
    msg = str(info.value)
    assert "cifar100" in msg and "train" in msg
    assert str(ROOT / "cifar100-npz" / "cifar100_train.npz") in msg and str(ROOT / "cifar-100-python") in msg
    assert "TITN_EDU_DATA" in msg and "titn-edu data export cifar100 --out DIR" in msg
    assert "data root from the root argument" in msg


@pytest.mark.parametrize("name", data.DATASETS)
def test_empty_root_without_download_is_a_clear_error(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=name) as info:
        data.get_dataset(name, train=False, root=tmp_path, download=False)
    assert str(tmp_path / f"{name}-npz" / f"{name}_test.npz") in str(info.value)


def test_network_failure_during_download_becomes_file_not_found(tmp_path, monkeypatch):
    calls = []

    class Offline:
        def __init__(self, root, train, download):
            calls.append(download)
            if download:
                raise urllib.error.URLError("[Errno -2] Name or service not known")
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setitem(data._TORCHVISION, "cifar10", (Offline, "cifar-10-batches-py"))
    with pytest.raises(FileNotFoundError, match="download failed") as info:
        data.get_dataset("cifar10", train=True, root=tmp_path)  # download=None: try, since nothing was found
    assert calls == [False, True]
    assert "Name or service not known" in str(info.value) and "titn-edu data export" in str(info.value)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


@pytest.mark.parametrize("error", [TimeoutError("timed out"), http.client.IncompleteRead(b"partial"),
                                   PermissionError("read-only file system")])
def test_other_download_failures_become_file_not_found(tmp_path, monkeypatch, error):
    class Broken:
        def __init__(self, root, train, download):
            if download:
                raise error
            raise RuntimeError("Dataset not found.")

    monkeypatch.setitem(data._TORCHVISION, "mnist", (Broken, "MNIST/raw"))
    with pytest.raises(FileNotFoundError, match="download failed"):
        data.get_dataset("mnist", train=False, root=tmp_path, download=True)


def test_found_data_is_never_downloaded(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("torchvision must not be asked when the npz file exists")

    monkeypatch.setitem(data._TORCHVISION, "cifar10", (fail, "cifar-10-batches-py"))
    assert len(data.get_dataset("cifar10", train=True, root=fake_root(tmp_path), download=True)) == 30


@pytest.mark.parametrize("bad", ["imagenet", "CIFAR-10", "", None, 3])
def test_unknown_dataset_name(bad):
    with pytest.raises(ValueError, match="mnist, cifar10, cifar100"):
        data.get_dataset(bad, train=True)
    with pytest.raises(ValueError, match="mnist, cifar10, cifar100"):
        data.get_transforms(bad, train=True)


def test_bad_arguments(tmp_path):
    root = fake_root(tmp_path)
    with pytest.raises(TypeError, match="train"):
        data.get_dataset("cifar10", train="yes", root=root)
    with pytest.raises(ValueError, match="transform"):
        data.get_dataset("cifar10", train=True, root=root, transform="none")
    with pytest.raises(TypeError, match="download"):
        data.get_dataset("cifar10", train=True, root=root, download="auto")


def test_malformed_npz_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar10-npz"
    folder.mkdir()
    np.savez(folder / "cifar10_test.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks the arrays"):
        data.get_dataset("cifar10", train=False, root=tmp_path)
    (folder / "cifar10_test.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="Could not read"):
        data.get_dataset("cifar10", train=False, root=tmp_path)


def test_image_array_dataset_checks_its_inputs():
    with pytest.raises(ValueError, match="uint8"):
        data.ImageArrayDataset(torch.zeros(2, 3, 8, 8), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        data.ImageArrayDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.ImageArrayDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0, 2], ["a", "b"])


# ----------------------------------------------------------------------------------------------
# limit: class-balanced, seeded subsets
# ----------------------------------------------------------------------------------------------


def test_limit_is_class_balanced_and_seeded():
    full = raw("mnist", "train")  # MNIST's classes are unequal (5421 … 6742 images)
    a = data.get_dataset("mnist", train=True, root=ROOT, transform="raw", limit=1000, seed=1)
    b = data.get_dataset("mnist", train=True, root=ROOT, transform="raw", limit=1000, seed=1)
    c = data.get_dataset("mnist", train=True, root=ROOT, transform="raw", limit=1000, seed=2)
    assert len(a) == 1000 and (torch.bincount(a.targets) == 100).all()
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    # the kept images are real ones, with their own labels
    picked = data._balanced_indices(full.targets, 1000, 10, seed=1)
    assert torch.equal(a.images, full.images[picked]) and torch.equal(a.targets, full.targets[picked])
    odd = data.get_dataset("mnist", train=True, root=ROOT, transform="raw", limit=1005)
    counts = torch.bincount(odd.targets)
    assert counts.sum() == 1005 and counts.max() - counts.min() == 1


def test_limit_on_a_small_class_takes_it_all_and_fills_from_the_others():
    targets = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)
    picked = data._balanced_indices(targets, 30, 3, seed=0)
    assert len(picked) == 30 and len(set(picked.tolist())) == 30
    assert torch.bincount(targets[picked]).tolist() == [2, 14, 14]


@pytest.mark.parametrize("bad", [0, -5, 9, 2.5, True, "100"])
def test_bad_limit(tmp_path, bad):
    with pytest.raises(ValueError, match="limit"):
        data.get_dataset("cifar10", train=True, root=fake_root(tmp_path), limit=bad)


def test_limit_larger_than_the_split_keeps_everything(tmp_path):
    assert len(data.get_dataset("cifar10", train=True, root=fake_root(tmp_path), limit=1000)) == 30


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.DATASETS)
def test_training_transforms_are_random_and_augment_false_is_the_test_transform(name):
    size = 28 if name == "mnist" else 32
    torch.manual_seed(0)
    image = torch.randint(0, 256, (data.IN_CHANS[name], size, size), dtype=torch.uint8)
    train = data.get_transforms(name, train=True)
    outs = [train(image) for _ in range(4)]
    assert all(o.shape == (data.IN_CHANS[name], 32, 32) and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    plain = data.get_transforms(name, train=True, augment=False)(image)
    torch.testing.assert_close(plain, data.get_transforms(name, train=False)(image))
    torch.testing.assert_close(plain, data.get_transforms(name, train=False)(image))


def test_paper_augmentations_are_in_the_pipelines():
    cifar = [type(t).__name__ for t in data.get_transforms("cifar10", train=True).transforms]
    assert cifar[:3] == ["AutoAugment", "RandomCrop", "RandomHorizontalFlip"] and "Normalize" in cifar
    mnist = [type(t).__name__ for t in data.get_transforms("mnist", train=True).transforms]
    assert {"Pad", "RandomCrop", "RandomAffine", "ColorJitter", "Normalize"} <= set(mnist)
    affine = next(t for t in data.get_transforms("mnist", train=True).transforms if type(t).__name__ == "RandomAffine")
    assert list(affine.degrees) == [-10.0, 10.0]  # the random rotation lives in the affine warp


# ----------------------------------------------------------------------------------------------
# Batch mixing (CutMix, MixUp)
# ----------------------------------------------------------------------------------------------


def _indexed_batch(b: int = 6):
    """Image i is constant i + 1, label i: every pixel tells which image it came from."""
    images = (torch.arange(b, dtype=torch.float32) + 1).view(b, 1, 1, 1).expand(b, 3, 32, 32).contiguous()
    return images, torch.arange(b)


def test_cutmix_targets_are_the_unpasted_area_fraction():
    torch.manual_seed(0)
    mix = data.batch_mixer("cutmix", num_classes=6)
    images, labels = _indexed_batch()
    partial = 0
    for _ in range(30):
        mixed, soft = mix(images, labels)
        assert mixed.shape == images.shape and soft.shape == (6, 6) and soft.dtype == torch.float32
        torch.testing.assert_close(soft.sum(1), torch.ones(6))
        for i in range(6):
            own = (mixed[i] == i + 1).float().mean()  # fraction of image i left in place
            partner = (i - 1) % 6  # CutMix pastes from the batch rolled by one
            assert ((mixed[i] == i + 1) | (mixed[i] == partner + 1)).all()
            torch.testing.assert_close(soft[i, i], own)
            torch.testing.assert_close(soft[i, partner], 1 - own)
        partial += bool(0 < soft[0, 0] < 1)
    assert partial > 5


def test_mixup_blends_images_and_targets_with_the_same_lambda():
    torch.manual_seed(0)
    images, labels = _indexed_batch()
    mixed, soft = data.batch_mixer("mixup", num_classes=6, alpha=0.5)(images, labels)
    lam = soft[0, 0]
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))


def test_cutmix_or_mixup_and_none():
    images, labels = _indexed_batch()
    mixed, soft = data.batch_mixer(None, num_classes=8)(images, labels)
    assert mixed is images and torch.equal(soft, F.one_hot(labels, 8).float())
    assert torch.equal(data.batch_mixer("none", num_classes=8)(images, labels)[1], soft)
    mixed, soft = data.batch_mixer("cutmix_or_mixup", num_classes=8)(images, labels)
    assert mixed.shape == images.shape and soft.shape == (6, 8)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))


@pytest.mark.parametrize("kind,alpha", [("cutout", 0.5), ("CutMix ", 0.5), ("cutmix", 0.0), ("mixup", -1.0),
                                        ("cutmix", float("inf")), ("cutmix", "0.5"), (3, 0.5)])
def test_bad_mixer_arguments(kind, alpha):
    with pytest.raises(ValueError):
        data.batch_mixer(kind, num_classes=10, alpha=alpha)


def test_mixer_checks_the_batch():
    mix = data.batch_mixer("cutmix", num_classes=10)
    with pytest.raises(ValueError, match="float"):
        mix(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        mix(torch.zeros(4, 3, 8, 8), torch.zeros(4, 10))
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        mix(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 10]))


# ----------------------------------------------------------------------------------------------
# Export and loaders
# ----------------------------------------------------------------------------------------------


def test_export_round_trips_real_mnist_from_torchvision_files(tmp_path):
    source = raw("mnist", "test")
    written = data.export_dataset("mnist", tmp_path, root=ROOT, download=False, splits=("test",))
    assert written == [tmp_path / "mnist-npz" / "mnist_test.npz"]
    assert sorted(p.name for p in (tmp_path / "mnist-npz").iterdir()) == ["mnist_test.npz"]  # no temp left
    with np.load(written[0], allow_pickle=False) as f:
        assert f["images"].shape == (10_000, 28, 28, 1) and f["images"].dtype == np.uint8
        assert f["labels"].dtype == np.int64 and f["classes"].shape == (10,)
    back = data.get_dataset("mnist", train=False, root=tmp_path, download=False, transform="raw")
    assert torch.equal(back.images, source.images) and torch.equal(back.targets, source.targets)
    assert back.classes == source.classes


def test_export_round_trips_the_npz_format_for_every_split(tmp_path):
    src = fake_root(tmp_path / "src", "cifar100", "train", n_per_class=1)
    fake_root(tmp_path / "more", "cifar100", "test", n_per_class=1)
    (src / "cifar100-npz" / "cifar100_test.npz").write_bytes(
        (tmp_path / "more" / "cifar100-npz" / "cifar100_test.npz").read_bytes())
    out = tmp_path / "out"
    written = data.export_dataset("cifar100", out, root=src, download=False)
    assert [p.name for p in written] == ["cifar100_train.npz", "cifar100_test.npz"]
    for split in ("train", "test"):
        a = data.get_dataset("cifar100", train=split == "train", root=src, transform="raw")
        b = data.get_dataset("cifar100", train=split == "train", root=out, transform="raw")
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and a.classes == b.classes


def test_export_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    src = fake_root(tmp_path / "src")
    out = tmp_path / "out"
    (target,) = data.export_dataset("cifar10", out, root=src, splits="train")
    before = target.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        data.export_dataset("cifar10", out, root=src, splits=["train"])
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_export_of_missing_data_or_bad_splits(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.export_dataset("cifar10", tmp_path / "out", root=tmp_path, download=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="splits"):
        data.export_dataset("cifar10", tmp_path / "out", root=tmp_path, splits=("val",))


def test_make_loader_batches(tmp_path):
    ds = data.get_dataset("cifar10", train=True, root=fake_root(tmp_path))
    xb, yb = next(iter(data.make_loader(ds, batch_size=8, train=True, seed=0)))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.long
    assert len(data.make_loader(ds, batch_size=8, train=True)) == 3  # 30 images: last 6 dropped
    assert len(data.make_loader(ds, batch_size=8, train=False)) == 4
    first = [y.tolist() for _, y in data.make_loader(ds, batch_size=8, train=True, seed=3)]
    again = [y.tolist() for _, y in data.make_loader(ds, batch_size=8, train=True, seed=3)]
    assert first == again
    with pytest.raises(ValueError, match="batch_size"):
        data.make_loader(ds, batch_size=0, train=True)


def test_crop_flip_is_the_light_level_and_levels_are_checked():
    cifar = [type(t).__name__ for t in data.get_transforms("cifar10", train=True, augment="crop-flip").transforms]
    assert cifar[:2] == ["RandomCrop", "RandomHorizontalFlip"] and "AutoAugment" not in cifar
    mnist = [type(t).__name__ for t in data.get_transforms("mnist", train=True, augment="crop-flip").transforms]
    assert mnist[:2] == ["Pad", "RandomCrop"] and "RandomHorizontalFlip" not in mnist  # digits are not mirrored
    assert data.augmentation_level(True) == "paper" and data.augmentation_level(False) == "none"
    none = [type(t).__name__ for t in data.get_transforms("cifar10", train=True, augment="none").transforms]
    assert none == [type(t).__name__ for t in data.get_transforms("cifar10", train=False).transforms]
    for bad in ("heavy", 1, None):
        with pytest.raises(ValueError, match="augment must be"):
            data.get_transforms("cifar10", train=True, augment=bad)
