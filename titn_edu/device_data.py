"""Data on the device: a whole uint8 split kept on the GPU and augmented a batch at a time there.

The standard path (:func:`titn_edu.data.get_transforms` in a ``DataLoader``) augments one image at
a time in Python: 1,870 (MNIST) and 2,672 (CIFAR-10) images per second on a 2-core CPU
(``python benchmarks/data_path.py``, docs/performance.md), which caps every training step at that
rate, however fast the GPU. :class:`DeviceLoader` instead

* copies the split once to the device as ``uint8`` (CIFAR-10's 50,000 images: 150 MB),
* shuffles indices, gathers a batch there, and
* augments the whole batch in a few tensor operations (:class:`BatchAugment`): per-image random
  parameters, drawn as tensors, no Python loop over images.

It yields ``(float32 images (B, C, 32, 32), int64 labels (B,))`` on the device, like a
``DataLoader`` over ``get_dataset(name, train=...)``, and :func:`titn_edu.fit` accepts it as its
training or validation data. It works on any device, CPU included (``python
benchmarks/data_path.py`` compares both paths there).

The augmentations are the paper's (§3.4, the same families and ranges as
:func:`~titn_edu.data.get_transforms`), with two differences, both for speed:

* MNIST: the random crop and the random affine warp are one resampling (nearest, like
  ``RandomAffine``; the crop is an integer shift, so this equals doing them one after the other),
  and the colour jitter works in float, without rounding to uint8 in between;
* CIFAR: AutoAugment draws one of its sub-policies per *group* of ``policy_group`` images (default
  8) instead of per image; the crop and the flip are drawn per image.

Randomness comes from torch's generator of the device (seeded by ``titn_edu.seed_everything``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from .data import IMAGE_SIZE, IN_CHANS, MEAN, STD, ImageArrayDataset, _check_name, augmentation_level
from .utils import resolve_device

__all__ = ["BatchAugment", "DeviceLoader", "random_shift", "random_affine"]


def _uniform(n: int, low: float, high: float, device: torch.device) -> Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def random_shift(images: Tensor, padding: int, *, offsets: Tensor | None = None) -> Tensor:
    """``RandomCrop(H, padding)`` for a whole batch, each image with its own offset (zero fill).

    ``images (B, C, H, W)`` of any dtype; ``offsets (B, 2)`` integer ``(dy, dx)`` in ``[0, 2·padding]``
    (drawn at random when ``None``): image ``b`` becomes ``pad(images[b])[:, dy:dy+H, dx:dx+W]``.
    """
    b, c, h, w = images.shape
    if offsets is None:
        offsets = torch.randint(0, 2 * padding + 1, (b, 2), device=images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    picked = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return picked.permute(0, 3, 1, 2).contiguous()


def _inverse_affine(angle: Tensor, translate: Tensor, scale: Tensor, shift: Tensor, size: int) -> Tensor:
    """``affine_grid`` matrices ``(B, 2, 3)``: output pixel → input pixel, in normalised coordinates.

    The warp of ``torchvision.transforms.v2.functional.affine`` (rotation by ``angle`` degrees and
    scaling about the centre, then ``translate`` pixels), followed by an integer ``shift`` of the
    source (a random crop done first). Pixel coordinates are relative to the image centre, so the
    normalised (``align_corners=False``) coordinates are ``2 / size`` times them.
    """
    rot = torch.deg2rad(angle)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    linear = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    offset = -(linear @ translate.unsqueeze(-1)).squeeze(-1) + shift  # A⁻¹(p - t) + s
    return torch.cat([linear, (2.0 / size) * offset.unsqueeze(-1)], dim=-1)


def random_affine(
    images: Tensor,
    *,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    shift: int = 0,
    params: dict[str, Tensor] | None = None,
) -> Tensor:
    """``RandomCrop(padding=shift)`` then ``RandomAffine(degrees, (translate, translate), scale)`` on a batch.

    One nearest-neighbour resampling per image, each with its own angle, translation (whole pixels,
    as torchvision draws them), scale and crop offset; zero fill. ``images`` is float ``(B, C, H, W)``
    (square). ``params`` (``angle``, ``translate``, ``scale``, ``shift`` tensors) replaces the draw.
    """
    b, _, h, w = images.shape
    if h != w:
        raise ValueError(f"random_affine expects square images; got {h}x{w}.")
    dev = images.device
    if params is None:
        max_t = translate * w
        params = {
            "angle": _uniform(b, -degrees, degrees, dev),
            "translate": torch.round(torch.empty(b, 2, device=dev).uniform_(-max_t, max_t)),
            "scale": _uniform(b, scale[0], scale[1], dev),
            "shift": torch.randint(-shift, shift + 1, (b, 2), device=dev).float(),
        }
    theta = _inverse_affine(params["angle"].float(), params["translate"].float(), params["scale"].float(),
                            params["shift"].float(), w)
    grid = F.affine_grid(theta, [b, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class BatchAugment:
    """The paper's transforms (§3.4) for whole ``uint8`` batches on any device → normalised float32.

    Args:
        name: ``"mnist"``, ``"cifar10"`` or ``"cifar100"``.
        train, augment: as :func:`~titn_edu.data.get_transforms`: random augmentations only when
            ``train``; ``augment`` is ``True``/``"paper"``, ``"crop-flip"`` or ``False``/``"none"``.
        policy_group: CIFAR's AutoAugment draws one sub-policy per this many images (1 = per image,
            as the per-image path; larger = fewer, bigger calls).

    ``__call__(images uint8 (B, C, H, W)) -> float32 (B, C, 32, 32)``, on the images' device.
    """

    def __init__(self, name: str, *, train: bool, augment: bool | str = True, policy_group: int = 8) -> None:
        self.name = _check_name(name)
        if isinstance(policy_group, bool) or not isinstance(policy_group, int) or policy_group < 1:
            raise ValueError(f"policy_group must be a positive integer; got {policy_group!r}.")
        self.train, self.policy_group = bool(train), policy_group
        self.level = augmentation_level(augment) if self.train else "none"
        self.augment = self.level != "none"
        self.random = self.augment
        self._autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if self.name != "mnist" else None
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _normalise(self, x: Tensor) -> Tensor:
        """float in [0, 255] → ``(x / 255 - mean) / std``."""
        if x.device not in self._stats:
            mean = torch.tensor(MEAN[self.name], device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(STD[self.name], device=x.device).view(1, -1, 1, 1)
            self._stats[x.device] = (mean * 255.0, std * 255.0)
        mean, std = self._stats[x.device]
        return (x - mean) / std

    def __call__(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"BatchAugment expects a uint8 batch (B, C, H, W); got {got}.")
        if images.shape[1] != IN_CHANS[self.name]:
            raise ValueError(f"{self.name} images have {IN_CHANS[self.name]} channel(s); got a batch of shape "
                             f"{tuple(images.shape)}.")
        size = 28 if self.name == "mnist" else IMAGE_SIZE  # MNIST is padded 28 -> 32 here
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"{self.name} batches must hold {size}x{size} images (as get_dataset(..., "
                             f"transform='raw') loads them); got {tuple(images.shape[-2:])}.")
        if self.name == "mnist":
            x = F.pad(images, (2, 2, 2, 2)).float()  # 28 -> 32, as v2.Pad(2)
            if self.level == "paper":
                x = random_affine(x, degrees=10.0, translate=0.1, scale=(0.9, 1.1), shift=2)
                x = self._jitter(x, brightness=0.2, contrast=0.2)
            elif self.level == "crop-flip":  # digits: crop only
                x = random_shift(x, 2)
        else:
            x = images
            if self.random:
                if self.level == "paper":
                    x = self._auto_augment(x)
                x = random_shift(x, 4)
                flip = torch.rand(x.shape[0], device=x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            x = x.float()
        return self._normalise(x)

    def _auto_augment(self, x: Tensor) -> Tensor:
        g = self.policy_group
        parts = [self._autoaugment(tv_tensors.Image(x[i : i + g])) for i in range(0, x.shape[0], g)]
        return torch.cat([p.as_subclass(Tensor) for p in parts])

    @staticmethod
    def _jitter(x: Tensor, *, brightness: float, contrast: float) -> Tensor:
        """``ColorJitter(brightness, contrast)`` per image, in a random order per image, on [0, 255] floats."""
        b = x.shape[0]
        bright = _uniform(b, 1 - brightness, 1 + brightness, x.device).view(b, 1, 1, 1)
        contr = _uniform(b, 1 - contrast, 1 + contrast, x.device).view(b, 1, 1, 1)
        contrast_first = (torch.rand(b, device=x.device) < 0.5).view(b, 1, 1, 1)

        def adjust_brightness(t: Tensor) -> Tensor:
            return (t * bright).clamp_(0, 255)

        def adjust_contrast(t: Tensor) -> Tensor:
            grey = t.mean(dim=1, keepdim=True) if t.shape[1] == 1 else (
                0.2989 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])
            mean = grey.mean(dim=(1, 2, 3), keepdim=True)
            return (contr * t + (1 - contr) * mean).clamp_(0, 255)

        return torch.where(contrast_first, adjust_brightness(adjust_contrast(x)), adjust_contrast(adjust_brightness(x)))

    def __repr__(self) -> str:
        extra = f", policy_group={self.policy_group}" if self.level == "paper" and self.name != "mnist" else ""
        augment = {"paper": True, "none": False}.get(self.level, self.level)
        return f"{type(self).__name__}({self.name!r}, train={self.train}, augment={augment!r}{extra})"


class DeviceLoader:
    """Batches of an :class:`~titn_edu.data.ImageArrayDataset` kept on ``device``, augmented there.

    Args:
        dataset: a split from ``get_dataset(name, ..., transform="raw")`` (its own transform is not
            used: the uint8 images are).
        name: the dataset's name, which picks the augmentations (:class:`BatchAugment`).
        batch_size: images per batch.
        train: shuffle every epoch, drop an incomplete last batch, and augment (with ``augment``).
        augment: ``False`` gives the test-time transform (normalise only) even when ``train``.
        device: ``"auto"`` (CUDA → MPS → CPU) or a device.
        seed: fixes the shuffling order (``None``: torch's global generator, like a ``DataLoader``).
        policy_group: see :class:`BatchAugment`.

    ``len(loader)`` is the number of batches; iterating yields ``(images, labels)`` on the device.
    The attribute ``sampler`` (``None``: :meth:`epoch_order`) may hold the indices of every epoch
    instead (a list or a ``Sampler``): with several processes (:mod:`titn_edu.distributed`),
    ``fit`` gives each process a copy of the loader whose sampler yields its share of every batch.
    """

    def __init__(
        self,
        dataset: ImageArrayDataset,
        name: str,
        *,
        batch_size: int,
        train: bool,
        augment: bool = True,
        device: str | torch.device = "auto",
        seed: int | None = None,
        policy_group: int = 8,
    ) -> None:
        if not isinstance(dataset, ImageArrayDataset):
            raise TypeError(f"DeviceLoader needs an ImageArrayDataset (titn_edu.data.get_dataset(..., transform='raw')); "
                            f"got {type(dataset).__name__}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty; check the data root and any limit/subset option.")
        self.transform = BatchAugment(name, train=train, augment=augment, policy_group=policy_group)
        if dataset.images.shape[1] != IN_CHANS[self.transform.name]:
            raise ValueError(f"the dataset's images have {dataset.images.shape[1]} channel(s) but {name} has "
                             f"{IN_CHANS[self.transform.name]}: pass the name of the dataset it was loaded as.")
        self.device = resolve_device(device)
        self.images = dataset.images.to(self.device)
        self.targets = dataset.targets.to(self.device)
        self.batch_size, self.train = batch_size, bool(train)
        self.drop_last = self.train and len(dataset) > batch_size
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.sampler: Sequence[int] | Sampler[int] | None = None

    def __len__(self) -> int:
        n = self.images.shape[0] if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self) -> Tensor:
        """The indices of one epoch when the loader runs alone: a new permutation (``train``) or ``0 … n-1``."""
        n = self.images.shape[0]
        if self.train:
            return torch.randperm(n, generator=self.generator).to(self.device)
        return torch.arange(n, device=self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.sampler is None:
            order = self.epoch_order()
        else:
            order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        for step in range(len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.transform(self.images[index]), self.targets[index]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.images.shape[0]}, batch_size={self.batch_size}, batches={len(self)}, "
                f"device={self.device}, transform={self.transform!r})")
