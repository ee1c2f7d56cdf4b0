"""Part I, notebook 01 (patches and pixels): cutting an image into patches, and patches into pixels.

:func:`patchify` and :func:`pixelify` check a student's ``einops.rearrange`` (or ``reshape`` and
``permute``) against :func:`titn_edu.patchify` and :func:`titn_edu.pixelify` (paper §3.1: an image
becomes ``N`` patches, each patch ``P`` pixels); :func:`unpatchify` checks the inverse. When the
numbers are right but in another order, the hint names the axis order that produced it. None of them
accepts the library's own patch code (:mod:`titn_edu.embeddings`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import rearrange
from torch import Tensor

from .. import embeddings
from ..embeddings import patchify as reference_patchify
from ..embeddings import pixelify as reference_pixelify
from .guard import forbid
from .harness import CHECKERS, Case, difference, first_hint, generator, keeps_global_rng, passed, randint, require_callable

__all__ = ["patchify", "pixelify", "unpatchify"]

#: The library's patches and pixels (functions and embedding modules).
_FORBIDDEN = CHECKERS | forbid(embeddings)


@keeps_global_rng
def patchify(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check :func:`titn_edu.patchify`: ``student_fn(images, patch_size)``, ``(B, C, H, W) -> (B, N, p·p·C)``.

    Patches in row-major order; inside a patch the values ordered (row, column, channel).
    ``seed``: other shapes (non-square images, one patch, 1×1 patches, 2 or 4 channels): a hidden test.
    """
    require_callable("patchify", student_fn, "a function (images, patch_size) -> Tensor")
    check, reference = "patchify", "titn_edu.patchify"
    configs = _patch_configs(seed)
    images = _image_cases(50 if seed is None else seed, [c[0] for c in configs])
    total = len(configs)
    for i, ((shape, p), x) in enumerate(zip(configs, images)):
        case = Case(check, i, total, f"images {tuple(shape)}, patch_size={p}", _FORBIDDEN)
        want = reference_patchify(x, p)
        inputs = dict(images=x.clone())
        got = case.call(student_fn, inputs["images"], p)
        case.unchanged(inputs, dict(images=x))
        problem = difference(got, want, "patches")
        if problem:
            hint = first_hint(got, ((rearrange(x, pattern, p1=p, p2=p), text) for pattern, text in _PATCH_MISTAKES))
            if hint is None and isinstance(got, Tensor) and got.shape == want.shape and torch.equal(
                    got.reshape(shape[0], -1).sort(-1).values, want.reshape(shape[0], -1).sort(-1).values):
                hint = "you have the right numbers in a different order: check the axis order of your rearrange."
            case.fail(problem, hint)
    passed(check, total, reference)


def _patch_configs(seed: int | None) -> list[tuple[tuple[int, int, int, int], int]]:
    """``(image shape, patch size)`` of each case: the public ones, or drawn from ``seed``."""
    if seed is None:
        return [((2, 3, 8, 8), 4), ((1, 1, 28, 28), 7), ((2, 3, 32, 32), 8), ((1, 3, 16, 8), 4), ((2, 3, 32, 32), 16)]
    g = generator(seed)
    configs = []
    for _ in range(3):
        p = randint(g, 2, 6)
        configs.append(((randint(g, 1, 3), randint(g, 1, 4), p * randint(g, 1, 5), p * randint(g, 1, 5)), p))
    p = randint(g, 2, 8)
    configs.append(((randint(g, 1, 2), 3, p, p), p))                      # a single patch
    configs.append(((1, randint(g, 1, 3), randint(g, 1, 6), randint(g, 1, 6)), 1))  # 1×1 patches
    return configs


#: Wrong patch orders and what to change; the right one is ``"b c (h p1) (w p2) -> b (h w) (p1 p2 c)"``.
_PATCH_MISTAKES = [
    ("b c (h p1) (w p2) -> b (w h) (p1 p2 c)", "your patches are in column-major order; number them row by row: '(h w)'."),
    ("b c (h p1) (w p2) -> b (h w) (c p1 p2)", "inside a patch order the values (row, column, channel): '(p1 p2 c)', not '(c p1 p2)'."),
    ("b c (h p1) (w p2) -> b (h w) (p2 p1 c)", "inside a patch go row by row: '(p1 p2 c)', not '(p2 p1 c)'."),
    ("b c (p1 h) (p2 w) -> b (h w) (p1 p2 c)", "a patch is a block of neighbouring pixels: split the height as '(h p1)', not '(p1 h)'."),
]


@keeps_global_rng
def pixelify(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check :func:`titn_edu.pixelify`: ``student_fn(images, patch_size, pixel_size)``,
    ``(B, C, H, W) -> (B, N, P, m·m·C)``: patches and the pixels inside each patch in row-major
    order, a pixel's values ordered (row, column, channel). ``seed``: other shapes (a hidden test)."""
    require_callable("pixelify", student_fn, "a function (images, patch_size, pixel_size) -> Tensor")
    check, reference = "pixelify", "titn_edu.pixelify"
    configs = _pixel_configs(seed)
    images = _image_cases(60 if seed is None else seed, [c[0] for c in configs])
    total = len(configs)
    for i, ((shape, p, m), x) in enumerate(zip(configs, images)):
        case = Case(check, i, total, f"images {tuple(shape)}, patch_size={p}, pixel_size={m}", _FORBIDDEN)
        want = reference_pixelify(x, p, m)
        inputs = dict(images=x.clone())
        got = case.call(student_fn, inputs["images"], p, m)
        case.unchanged(inputs, dict(images=x))
        problem = difference(got, want, "pixels")
        if problem:
            k = p // m
            dims = dict(ph=k, pw=k, m1=m, m2=m)
            hint = first_hint(got, ((rearrange(x, pattern, **dims), text) for pattern, text in _PIXEL_MISTAKES))
            if hint is None and isinstance(got, Tensor) and got.shape == (shape[0], (shape[2] // p) ** 2, k * k, m * m * shape[1]):
                hint = "right shape, wrong order: check the axis order of your rearrange."
            case.fail(problem, hint)
    passed(check, total, reference)


def _pixel_configs(seed: int | None) -> list[tuple[tuple[int, int, int, int], int, int]]:
    """``(image shape, patch size, pixel size)`` of each case: the public ones, or drawn from ``seed``."""
    if seed is None:
        return [((2, 3, 8, 8), 4, 2), ((1, 1, 28, 28), 14, 7), ((2, 3, 32, 32), 8, 2), ((1, 3, 16, 16), 8, 4)]
    g = generator(seed)
    configs = []
    for _ in range(3):
        m, k = randint(g, 1, 3), randint(g, 2, 4)
        p = m * k
        configs.append(((randint(g, 1, 3), randint(g, 1, 3), p * randint(g, 1, 3), p * randint(g, 1, 3)), p, m))
    m = randint(g, 2, 4)
    configs.append(((2, 3, 2 * m, 3 * m), m, m))          # one pixel per patch
    return configs


#: Wrong pixel orders and what to change; the right one is
#: ``"b c (h ph m1) (w pw m2) -> b (h w) (ph pw) (m1 m2 c)"``.
_PIXEL_MISTAKES = [
    ("b c (h ph m1) (w pw m2) -> b (w h) (ph pw) (m1 m2 c)", "number the patches row by row: '(h w)'."),
    ("b c (h ph m1) (w pw m2) -> b (h w) (pw ph) (m1 m2 c)", "number the pixels inside a patch row by row: '(ph pw)'."),
    ("b c (h ph m1) (w pw m2) -> b (h w) (ph pw) (c m1 m2)", "order a pixel's values (row, column, channel): '(m1 m2 c)'."),
    ("b c (ph h m1) (pw w m2) -> b (h w) (ph pw) (m1 m2 c)", "split the image into patches first, then each patch into pixels: '(h ph m1)'."),
]


def _image_cases(seed0: int, shapes: Sequence[tuple]) -> list[Tensor]:
    """One random image batch per shape, each from its own seed."""
    return [torch.randn(shape, generator=generator(seed0 + i)) for i, shape in enumerate(shapes)]


@keeps_global_rng
def unpatchify(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check the inverse of :func:`titn_edu.patchify`: ``student_fn(patches, patch_size, height, width, channels)``,
    ``(B, N, p·p·C) -> (B, C, H, W)``, must give back exactly the images the patches were cut from.
    ``seed``: other shapes (a hidden test)."""
    require_callable("unpatchify", student_fn, "a function (patches, patch_size, height, width, channels) -> Tensor")
    check, reference = "unpatchify", "the images titn_edu.patchify cut"
    configs = _patch_configs(seed)
    images = _image_cases(70 if seed is None else seed + 1, [c[0] for c in configs])
    total = len(configs)
    for i, ((shape, p), x) in enumerate(zip(configs, images)):
        _, c, h, w = shape
        patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        case = Case(check, i, total, f"patches {tuple(patches.shape)}, patch_size={p}, height={h}, width={w}, "
                                     f"channels={c}", _FORBIDDEN)
        inputs = dict(patches=patches.clone())
        got = case.call(student_fn, inputs["patches"], p, h, w, c)
        case.unchanged(inputs, dict(patches=patches))
        problem = difference(got, x, "images")
        if problem:
            hint = first_hint(got, [
                (rearrange(patches, "b (w h) (p1 p2 c) -> b c (h p1) (w p2)", h=h // p, p1=p, p2=p),
                 "the patches are numbered row by row: split the sequence as '(h w)', not '(w h)'."),
                (rearrange(patches, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=h // p, p1=p, p2=p),
                 "inside a patch the values are ordered (row, column, channel): '(p1 p2 c)'."),
            ])
            case.fail(problem, hint)
    passed(check, total, reference)
