"""Datasets, augmentations and batch mixing for TITN (paper §3.3 datasets, §3.4 augmentations, §3.5.2 CutMix).

Three datasets, one in-memory format:

* **MNIST** (§3.3.1) — 60,000 + 10,000 greyscale 28×28 digits, padded to 32×32 by the transforms;
* **CIFAR-10** (§3.3.2) — 50,000 + 10,000 RGB 32×32 images, 10 classes;
* **CIFAR-100** (§3.3.3) — 50,000 + 10,000 RGB 32×32 images, 100 fine classes.

Every split is loaded once into a single ``uint8`` tensor ``(N, C, H, W)`` held by
:class:`ImageArrayDataset`; ``torchvision.transforms.v2`` then works on tensors (no PIL round-trip),
which keeps CPU training fast.

Where the data comes from (:func:`get_dataset`), in this order, under one *data root*:

1. the offline npz format ``<root>/<name>-npz/<name>_<split>.npz`` (see :func:`export_dataset`);
2. torchvision's own files (``<root>/MNIST/raw``, ``<root>/cifar-10-batches-py``, ``<root>/cifar-100-python``);
3. a download through torchvision, when allowed (``download=True``, or ``None`` = only if not found).

The data root is the ``root`` argument, else the ``TITN_EDU_DATA`` environment variable, else a per-user
cache folder (``$XDG_CACHE_HOME/titn_edu/data`` or ``~/.cache/titn_edu/data``), see :func:`data_root`.

Quick tour::

    >>> train = get_dataset("cifar10", train=True)           # augmented float32 (3, 32, 32) images
    >>> raw = get_dataset("mnist", train=False, transform="raw")  # uint8 (1, 28, 28), for plotting
    >>> raw.images.shape                                      # all images at once, uint8 (N, C, H, W)
    torch.Size([10000, 1, 28, 28])
    >>> mix = batch_mixer("cutmix", num_classes=10)           # (images, labels) -> (images, soft targets)
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "DATASETS",
    "NUM_CLASSES",
    "IN_CHANS",
    "IMAGE_SIZE",
    "MEAN",
    "STD",
    "ImageArrayDataset",
    "BatchMixer",
    "data_root",
    "npz_path",
    "get_dataset",
    "get_transforms",
    "batch_mixer",
    "export_dataset",
    "make_loader",
]

DATASETS = ("mnist", "cifar10", "cifar100")
NUM_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
IN_CHANS = {"mnist": 1, "cifar10": 3, "cifar100": 3}
IMAGE_SIZE = 32  # every dataset is fed to the models at 32×32 (MNIST is padded 28 -> 32)

# Per-channel statistics of the training splits, on the [0, 1] scale. MNIST uses the customary 28×28
# figures (the zero padding to 32×32 is not counted). Recomputed in tests/test_data.py.
MEAN = {
    "mnist": (0.1307,),
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
}
STD = {
    "mnist": (0.3081,),
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
}

# torchvision's classes and the folders they read from ``root`` (download=False).
_TORCHVISION = {
    "mnist": (tv_datasets.MNIST, "MNIST/raw"),
    "cifar10": (tv_datasets.CIFAR10, "cifar-10-batches-py"),
    "cifar100": (tv_datasets.CIFAR100, "cifar-100-python"),
}
_DOWNLOAD_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")
    return name.lower()


def _split(train: Any) -> str:
    if not isinstance(train, bool):
        raise TypeError(f"train must be True (training split) or False (test split); got {train!r}.")
    return "train" if train else "test"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$TITN_EDU_DATA``, else a per-user cache folder.

    The cache folder is ``$XDG_CACHE_HOME/titn_edu/data`` (or ``~/.cache/titn_edu/data``); it is where
    downloads go when nothing else is set. The folder is not created here.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("TITN_EDU_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "titn_edu" / "data"


def npz_path(root: str | os.PathLike, name: str, split: str) -> Path:
    """Where the offline npz file of ``name``/``split`` lives under ``root``."""
    return Path(root) / f"{name}-npz" / f"{name}_{split}.npz"


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread():
    """Run per-image transforms on one intra-op thread.

    A 32×32 image is far too small to split across threads. On a 2-core machine busy with other
    processes, ``python benchmarks/bench_data.py`` timed the CIFAR-10 training transform at 10–19 ms
    per image with two threads against 0.35–1.4 ms with one. DataLoader workers already run on one
    thread; this gives ``num_workers=0`` the same speed.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ImageArrayDataset(Dataset):
    """A whole image-classification split held in memory as one ``uint8`` tensor.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)`` (channels first, values 0…255).
        labels: ``(N,)`` integer class indices into ``classes``.
        classes: class names, in label order.
        transform: applied to each image (a ``tv_tensors.Image``, uint8 ``(C, H, W)``); ``None``
            returns the stored uint8 image unchanged (handy for plotting).

    Attributes ``images`` (uint8 ``(N, C, H, W)``), ``targets`` (``LongTensor (N,)``) and ``classes``
    (``list[str]``) give the whole split at once. Items are ``(image, label)`` with ``label`` an ``int``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | Sequence[int],
        classes: Sequence[str],
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W); got {got}.")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels in dim 1 (N, C, H, W); got shape {tuple(images.shape)}.")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},) to match the images; got {tuple(labels.shape)}.")
        classes = [str(c) for c in classes]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels must lie in [0, {len(classes) - 1}] (one per class name); got "
                             f"[{int(labels.min())}, {int(labels.max())}].")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None; got {type(transform).__name__}.")
        self.images = images
        self.targets = labels
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            with _one_thread():
                image = self.transform(tv_tensors.Image(image))
        return image, int(self.targets[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageArrayDataset:
        """A new dataset with the chosen items (copied), the same classes and transform."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageArrayDataset(self.images[indices].clone(), self.targets[indices].clone(), self.classes,
                                 self.transform)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"{type(self).__name__}(n={len(self)}, image=uint8 ({c}, {h}, {w}), classes={self.num_classes}, "
                f"transform={'none' if self.transform is None else type(self.transform).__name__})")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _load_npz(path: Path) -> tuple[Tensor, Tensor, list[str]]:
    expected = "'images' (N, H, W, C) uint8, 'labels' (N,) int64 and 'classes' (C,) str"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("images", "labels", "classes") if k in f.files}
    except (OSError, EOFError, ValueError, AttributeError, zipfile.BadZipFile) as err:  # truncated, .npy, pickle
        raise ValueError(f"Could not read {path} as an npz file holding {expected} ({err}); re-create it with "
                         "export_dataset.") from err
    missing = {"images", "labels", "classes"} - set(arrays)
    if missing:
        raise ValueError(f"{path} lacks the arrays {sorted(missing)}; expected {expected}.")
    images, labels, classes = arrays["images"], arrays["labels"], arrays["classes"]
    if images.ndim == 3:  # (N, H, W) greyscale
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: 'images' must be uint8 (N, H, W, C) with C in (1, 3); got {images.dtype} "
                         f"{images.shape}.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != images.shape[:1]:
        raise ValueError(f"{path}: 'labels' must be integers of shape ({images.shape[0]},); got {labels.dtype} "
                         f"{labels.shape}.")
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return nchw, torch.from_numpy(labels.astype(np.int64)), [str(c) for c in classes]


def _from_torchvision(ds: Any) -> tuple[Tensor, Tensor, list[str]]:
    data = ds.data
    if isinstance(data, Tensor):  # MNIST: uint8 (N, 28, 28)
        images = data.unsqueeze(1).contiguous()
    else:  # CIFAR: numpy uint8 (N, 32, 32, 3)
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Give downloads a timeout (torchvision sets none) so an unreachable server cannot hang forever."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _root_origin(root: str | os.PathLike | None) -> str:
    if root is not None:
        return "the root argument"
    if os.environ.get("TITN_EDU_DATA"):
        return "TITN_EDU_DATA"
    return "the per-user cache; TITN_EDU_DATA is not set"


def _not_found(name: str, split: str, searched: list[str], reason: str, origin: str) -> FileNotFoundError:
    lines = "\n".join(f"  - {s}" for s in searched)
    return FileNotFoundError(
        f"The {split} split of {name} was not found ({reason}; data root from {origin}). Searched:\n{lines}\n"
        "To fix it, do one of:\n"
        f"  * set TITN_EDU_DATA (or pass root=) to a folder holding {name}-npz/{name}_{split}.npz or "
        "torchvision's files;\n"
        f"  * on a machine with internet access run `titn-edu data export {name} --out DIR`, copy DIR here "
        "and set TITN_EDU_DATA=DIR;\n"
        "  * go online and call again with download=True (or download=None)."
    )


def _load_arrays(name: str, split: str, root: str | os.PathLike | None,
                 download: bool | None) -> tuple[Tensor, Tensor, list[str]]:
    origin, root = _root_origin(root), data_root(root)
    npz = npz_path(root, name, split)
    if npz.is_file():
        return _load_npz(npz)
    cls, folder = _TORCHVISION[name]
    searched = [f"{npz} (offline npz format)", f"{root / folder} (torchvision's files)"]
    try:
        return _from_torchvision(cls(root=str(root), train=split == "train", download=False))
    except RuntimeError:  # torchvision: "Dataset not found or corrupted."
        pass
    if download is False:
        raise _not_found(name, split, searched, "download=False", origin)
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            ds = cls(root=str(root), train=split == "train", download=True)
    except (OSError, EOFError, http.client.HTTPException, RuntimeError, ValueError) as err:
        # URLError, timeouts, broken connections, read-only root, truncated archive, bad md5
        searched.append(f"download into {root} failed: {type(err).__name__}: {err}")
        raise _not_found(name, split, searched, "the download failed", origin) from err
    return _from_torchvision(ds)


def _balanced_indices(targets: Tensor, limit: int, num_classes: int, seed: int) -> Tensor:
    """``limit`` indices drawn round-robin over the classes (counts differ by at most one), seeded."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=gen)  # random order ...
    shuffled = targets[order]
    ranked = torch.argsort(shuffled, stable=True)  # ... grouped by class, still random within each class
    counts = torch.bincount(shuffled, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(ranked)
    rank[ranked] = torch.arange(len(targets)) - starts[shuffled[ranked]]  # position of each item in its class
    class_tiebreak = torch.randperm(num_classes, generator=gen)[shuffled]
    key = rank * num_classes + class_tiebreak  # first one of every class, then the second ...
    chosen = order[torch.argsort(key)[:limit]]
    return chosen.sort().values


def get_dataset(
    name: str,
    *,
    train: bool,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
    transform: Callable | str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> ImageArrayDataset:
    """One split of MNIST, CIFAR-10 or CIFAR-100 (paper §3.3) as an :class:`ImageArrayDataset`.

    Args:
        name: ``"mnist"``, ``"cifar10"`` or ``"cifar100"``.
        train: ``True`` for the training split, ``False`` for the test split.
        root: data root; default :func:`data_root` (``$TITN_EDU_DATA`` or the per-user cache).
        download: ``True`` downloads through torchvision if the files are not found, ``False`` never
            does, ``None`` (default) tries only when nothing is found. A failed download raises
            ``FileNotFoundError`` too.
        transform: ``None`` = the standard transform of the split (:func:`get_transforms`: augmented
            float32 ``(C, 32, 32)`` for training, normalised only for test); ``"raw"`` = no transform,
            items are the stored uint8 ``(C, H, W)`` images (MNIST stays 28×28), for plotting; or any
            callable taking a uint8 ``tv_tensors.Image``.
        limit: keep only this many images, class-balanced (e.g. 1000 → 100 per class for 10 classes),
            chosen at random with ``seed``; ``None`` keeps all.
        seed: seed of the ``limit`` subset.

    Raises:
        ValueError: unknown ``name`` or bad ``limit``.
        FileNotFoundError: the split is nowhere to be found and cannot be downloaded; the message lists
            every place searched and how to fix it.
    """
    name = _check_name(name)
    split = _split(train)
    if download not in (None, True, False):
        raise TypeError(f"download must be True, False or None (auto); got {download!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < NUM_CLASSES[name]):
        raise ValueError(f"limit must be None or an integer >= the number of classes of {name} "
                         f"({NUM_CLASSES[name]}), so that every class keeps an image; got {limit!r}.")
    if transform is None:
        transform = get_transforms(name, train=train)
    elif isinstance(transform, str):
        if transform != "raw":
            raise ValueError(f"transform must be None (standard), 'raw' (uint8 images) or a callable; got {transform!r}.")
        transform = None
    elif not callable(transform):
        raise TypeError(f"transform must be None, 'raw' or a callable; got {type(transform).__name__}.")

    images, labels, classes = _load_arrays(name, split, root, download)
    if images.shape[1] != IN_CHANS[name] or len(classes) != NUM_CLASSES[name]:
        raise ValueError(f"The {split} data found for {name} has {images.shape[1]} channels and {len(classes)} classes; "
                         f"expected {IN_CHANS[name]} and {NUM_CLASSES[name]}. Check the files under {data_root(root)}.")
    dataset = ImageArrayDataset(images, labels, classes, transform)
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(_balanced_indices(dataset.targets, limit, dataset.num_classes, seed))
    return dataset


# --------------------------------------------------------------------------------------------------
# Transforms (paper §3.4, §4.1)
# --------------------------------------------------------------------------------------------------


#: Augmentation levels accepted by ``augment=`` (``True`` means ``"paper"``, ``False`` means ``"none"``).
AUGMENTATIONS = ("paper", "crop-flip", "none")


def augmentation_level(augment: bool | str) -> str:
    """``augment`` as one of :data:`AUGMENTATIONS`: ``True`` → ``"paper"``, ``False`` → ``"none"``."""
    if augment is True or augment is False:
        return "paper" if augment else "none"
    if isinstance(augment, str) and augment.lower() in AUGMENTATIONS:
        return augment.lower()
    raise ValueError(f"augment must be True, False or one of {list(AUGMENTATIONS)}; got {augment!r}.")


def get_transforms(name: str, *, train: bool, augment: bool | str = True) -> v2.Compose:
    """The paper's per-image transforms (§3.4, §4.1), on uint8 tensors, giving float32 ``(C, 32, 32)``.

    * CIFAR-10/100, training: AutoAugment (CIFAR-10 policy), RandomCrop(32, padding=4),
      RandomHorizontalFlip, then to float and Normalize.
    * MNIST, training: pad 28 → 32, RandomCrop(32, padding=2), random rotation (±10°) and random
      affine (±10 % shift, 0.9–1.1 scale) fused into one ``RandomAffine`` (one resampling instead of
      two, same family of warps), ColorJitter (brightness and contrast 0.2), Normalize.
    * ``augment="crop-flip"``: only the random crop (and, for CIFAR, the flip) — the lighter
      augmentation that short runs learn fastest with (``cifar10-quick``).
    * Test split, or ``augment=False`` (``"none"``): (MNIST: pad to 32) then Normalize only.

    CutMix/MixUp mix whole batches, so they live in :func:`batch_mixer`, not here.
    """
    name = _check_name(name)
    _split(train)
    level = augmentation_level(augment) if train else "none"
    steps: list[Any] = []
    if name == "mnist":
        steps.append(v2.Pad(2))  # 28×28 -> 32×32, digits stay centred
    if name == "mnist" and level == "paper":
        steps += [
            v2.RandomCrop(IMAGE_SIZE, padding=2),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),  # rotation + affine
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    elif name == "mnist" and level == "crop-flip":  # digits are not mirror-symmetric: crop only
        steps.append(v2.RandomCrop(IMAGE_SIZE, padding=2))
    elif level != "none":
        if level == "paper":
            steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
        steps += [v2.RandomCrop(IMAGE_SIZE, padding=4), v2.RandomHorizontalFlip()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN[name], STD[name]), v2.ToPureTensor()]
    return v2.Compose(steps)


# --------------------------------------------------------------------------------------------------
# Batch mixing (paper §3.5.2)
# --------------------------------------------------------------------------------------------------

_MIX_KINDS = ("cutmix", "mixup", "cutmix_or_mixup", "none")


class BatchMixer:
    """Callable ``(images (B, C, H, W) float, labels (B,) int) -> (images, soft_targets (B, num_classes))``.

    CutMix (§3.5.2) pastes a random box of the batch's next image (``images.roll(1, 0)``) into each
    image and sets the target to ``λ·onehot(y) + (1-λ)·onehot(y_rolled)``, λ being the unpasted area
    fraction with λ ~ Beta(α, α) before the box is clipped to the image (α = 0.5 in the paper). MixUp
    blends the whole images with the same λ rule. ``"none"`` returns the images unchanged and one-hot
    targets, so the training loop has one code path.
    """

    def __init__(self, kind: str, *, num_classes: int, alpha: float = 0.5) -> None:
        self.kind, self.num_classes, self.alpha = kind, num_classes, alpha
        if kind == "cutmix":
            self._mix = v2.CutMix(num_classes=num_classes, alpha=alpha)
        elif kind == "mixup":
            self._mix = v2.MixUp(num_classes=num_classes, alpha=alpha)
        elif kind == "cutmix_or_mixup":
            self._mix = v2.RandomChoice([v2.CutMix(num_classes=num_classes, alpha=alpha),
                                         v2.MixUp(num_classes=num_classes, alpha=alpha)])
        else:
            self._mix = None

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, C, H, W); got {got}.")
        if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.shape != images.shape[:1]:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be an int64 tensor ({images.shape[0]},) of class indices; got {got}.")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]; got [{int(labels.min())}, "
                             f"{int(labels.max())}].")
        if self._mix is None:
            return images, torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        mixed, soft = self._mix(images, labels)
        return mixed.as_subclass(Tensor), soft.to(images.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, num_classes={self.num_classes}, alpha={self.alpha})"


def batch_mixer(kind: str | None, *, num_classes: int, alpha: float = 0.5) -> BatchMixer:
    """A :class:`BatchMixer` for ``kind`` in ``"cutmix"``, ``"mixup"``, ``"cutmix_or_mixup"`` or ``None``/``"none"``.

    ``alpha`` is the Beta(α, α) parameter of λ (paper: 0.5). Built on ``torchvision.transforms.v2``.
    """
    kind = "none" if kind is None else kind
    if not isinstance(kind, str) or kind.lower() not in _MIX_KINDS:
        raise ValueError(f"Unknown batch mixing {kind!r}; expected one of {', '.join(_MIX_KINDS)} or None.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == float("inf"):
        raise ValueError(f"alpha (the Beta(alpha, alpha) parameter of lambda) must be a positive number; got {alpha!r}.")
    return BatchMixer(kind.lower(), num_classes=num_classes, alpha=float(alpha))


# --------------------------------------------------------------------------------------------------
# Export to the offline format, and loaders
# --------------------------------------------------------------------------------------------------


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` so that it is either complete or untouched: temp file in the same folder, then replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def export_dataset(
    name: str,
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> list[Path]:
    """Write ``name`` in the offline npz format under ``out_dir``; return the files written.

    Files: ``<out_dir>/<name>-npz/<name>_<split>.npz`` holding ``images`` (N, H, W, C) uint8
    (C = 3 RGB for CIFAR, 1 for MNIST), ``labels`` (N,) int64 and ``classes`` (C,) str — so ``out_dir``
    is itself a data root (``TITN_EDU_DATA=out_dir``). Each file is written atomically (a temp file in
    the same folder, then ``os.replace``). The data is read with :func:`get_dataset` (``root``,
    ``download`` as there); this is what ``titn-edu data export NAME --out DIR`` runs.
    """
    name = _check_name(name)
    if isinstance(splits, str):
        splits = (splits,)
    bad = [s for s in splits if s not in ("train", "test")]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty sequence of 'train'/'test'; got {list(splits)!r}.")
    written = []
    for split in dict.fromkeys(splits):
        ds = get_dataset(name, train=split == "train", root=root, download=download, transform="raw")
        path = npz_path(out_dir, name, split)
        _save_npz_atomic(
            path,
            images=ds.images.permute(0, 2, 3, 1).contiguous().numpy(),
            labels=ds.targets.numpy().astype(np.int64),
            classes=np.array(ds.classes, dtype=str),
        )
        written.append(path)
    return written


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader``: shuffled with incomplete last batch dropped when ``train``, in order otherwise.

    ``seed`` fixes the shuffling order (``None``: torch's global generator).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0; got {num_workers!r}.")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=generator,
    )
