"""Part I, notebook 00 (setup and data): what the model sees of an image.

:func:`preprocess` checks a student's test-time preprocessing (scale to [0, 1], normalise per channel,
pad MNIST to 32×32) against ``titn_edu.get_transforms(dataset, train=False)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms
from torch import Tensor

from .. import data, device_data
from ..data import DATASETS, MEAN, STD, get_transforms
from .guard import forbid
from .harness import CHECKERS, Case, difference, first_hint, generator, keeps_global_rng, passed, require_callable

__all__ = ["preprocess"]

#: The library's preprocessing (and torchvision's transforms, which it is made of).
_FORBIDDEN = CHECKERS | forbid(data, device_data, torchvision.transforms)

#: The stored images, before any transform: uint8 ``(C, H, W)``.
_RAW_SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


@keeps_global_rng
def preprocess(student_fn: Callable, dataset: str, *, seed: int | None = None) -> None:
    """Check a test-time preprocessing against ``titn_edu.get_transforms(dataset, train=False)``.

    ``student_fn(image)`` takes one stored image, a ``uint8`` tensor ``(C, H, W)`` with values
    0…255 (MNIST ``(1, 28, 28)``, CIFAR ``(3, 32, 32)``), and returns what the model sees: a float
    tensor ``(C, 32, 32)`` scaled to [0, 1] and normalised per channel with ``titn_edu.data.MEAN`` /
    ``STD`` of the dataset (MNIST is first padded by 2 black pixels on every side). It may not use
    the library's transforms or torchvision's. ``seed``: other images (a hidden test).
    """
    require_callable("preprocess", student_fn, "a function (uint8 image (C, H, W)) -> float image (C, 32, 32)")
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}; got {dataset!r}.")
    name = dataset.lower()
    check, reference = f"preprocess[{name}]", f"titn_edu.get_transforms({name!r}, train=False)"
    shape = _RAW_SHAPE[name]
    images, descs = _test_images(shape, seed)
    transform = get_transforms(name, train=False)
    total = len(images)
    for i, (image, what) in enumerate(zip(images, descs)):
        case = Case(check, i, total, f"{what}, uint8 {tuple(shape)}", _FORBIDDEN)
        want = transform(image.clone())
        inputs = dict(image=image.clone())
        got = case.call(student_fn, inputs["image"])
        case.unchanged(inputs, dict(image=image))
        problem = difference(got, want, "the preprocessed image")
        if problem:
            case.fail(problem, _preprocess_hint(got, image, name))
    passed(check, total, reference)


def _test_images(shape: tuple[int, int, int], seed: int | None) -> tuple[list[Tensor], list[str]]:
    """Three random images, an all-black and an all-white one; with a seed, other random images, one
    white dot on black and one image of a single grey level."""
    g = generator(90 if seed is None else seed)
    images = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) for _ in range(3)]
    if seed is None:
        images += [torch.zeros(shape, dtype=torch.uint8), torch.full(shape, 255, dtype=torch.uint8)]
        return images, ["random image 1", "random image 2", "random image 3", "black image", "white image"]
    dot = torch.zeros(shape, dtype=torch.uint8)
    dot[:, int(torch.randint(shape[1], (1,), generator=g)), int(torch.randint(shape[2], (1,), generator=g))] = 255
    grey = torch.full(shape, int(torch.randint(256, (1,), generator=g)), dtype=torch.uint8)
    return images + [dot, grey], ["random image 1", "random image 2", "random image 3", "a white dot", "one grey level"]


def _preprocess_hint(got: object, image: Tensor, name: str) -> str | None:
    """Which known mistake (forgotten scaling, wrong statistics, padding after normalising …) ``got`` is."""
    shape = tuple(image.shape)
    mean = torch.tensor(MEAN[name])[:, None, None]
    std = torch.tensor(STD[name])[:, None, None]
    pad = 2 if name == "mnist" else 0
    x = F.pad(image, (pad, pad, pad, pad)).float()
    mistakes = [
        ((x - mean) / std, "scale the uint8 values to [0, 1] (divide by 255) before normalising."),
        (x / 255, "normalise with the dataset's mean and std: (x - MEAN) / STD, per channel."),
        ((x / 255 - 0.5) / 0.5, "use the dataset's own statistics (titn_edu.data.MEAN / STD), not 0.5."),
        ((x / 255 - torch.tensor([0.485, 0.456, 0.406][: shape[0]])[:, None, None])
         / torch.tensor([0.229, 0.224, 0.225][: shape[0]])[:, None, None],
         "those are ImageNet's statistics; use the dataset's own (titn_edu.data.MEAN / STD)."),
        ((x / 255 - mean) * std, "divide by the standard deviation, do not multiply."),
    ]
    if pad:
        mistakes.append((F.pad((image.float() / 255 - mean) / std, (pad, pad, pad, pad)),
                         "pad before normalising: the border is black in pixel values (0), not 0 after normalising."))
    hint = first_hint(got, mistakes)
    if hint is None and isinstance(got, Tensor) and pad and tuple(got.shape[-2:]) == tuple(shape[-2:]):
        hint = "MNIST digits are 28×28: pad them by 2 pixels on every side to 32×32 (F.pad(x, (2, 2, 2, 2)))."
    return hint
