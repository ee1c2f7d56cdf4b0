"""From an image to tokens: patches, pixels, and their embeddings (paper §3.2, Fig. 2).

An image ``(B, C, H, W)`` is cut into ``N = (H / p)^2`` *patches* of ``p × p`` pixels (the outer
sequence). Each patch is cut again into ``P = (p / m)^2`` *pixel* sub-patches of ``m × m`` (the inner
sequence). The shapes are the documentation: every cut is one ``einops.rearrange`` with named axes.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["patchify", "pixelify", "PatchEmbed", "PixelEmbed", "PixelToPatch"]


def _check_divisible(size: int, part: int, what: str, part_name: str) -> None:
    if part < 1 or size % part != 0:
        raise ValueError(
            f"{what} {size} is not divisible by {part_name} {part}: the image must split into whole "
            f"pieces. Choose a {part_name} that divides {size} (e.g. "
            f"{[d for d in range(1, size + 1) if size % d == 0]})."
        )


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened patches: ``(B, C, H, W) -> (B, N, p·p·C)``, patches in row-major order.

    Within a patch the values are ordered (row, column, channel).
    """
    if images.dim() != 4:
        raise ValueError(f"patchify expects images of shape (B, C, H, W); got {tuple(images.shape)}.")
    _check_divisible(images.shape[-1], patch_size, "image width", "patch_size")
    _check_divisible(images.shape[-2], patch_size, "image height", "patch_size")
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def pixelify(images: Tensor, patch_size: int, pixel_size: int) -> Tensor:
    """Cut images into patches, and each patch into pixel sub-patches.

    ``(B, C, H, W) -> (B, N, P, m·m·C)`` with ``N = (H/p)^2`` patches and ``P = (p/m)^2`` pixels per
    patch; both orders are row-major, and the values of one pixel are ordered (row, column, channel).
    """
    if images.dim() != 4:
        raise ValueError(f"pixelify expects images of shape (B, C, H, W); got {tuple(images.shape)}.")
    _check_divisible(images.shape[-1], patch_size, "image width", "patch_size")
    _check_divisible(images.shape[-2], patch_size, "image height", "patch_size")
    _check_divisible(patch_size, pixel_size, "patch_size", "pixel_size")
    k = patch_size // pixel_size
    return rearrange(
        images,
        "b c (h ph m1) (w pw m2) -> b (h w) (ph pw) (m1 m2 c)",
        ph=k, pw=k, m1=pixel_size, m2=pixel_size,
    )


class PatchEmbed(nn.Module):
    """ViT/DeiT patch embedding: a linear projection of each raw flattened patch, ``(B, C, H, W) -> (B, N, D)``.

    (The same as a ``Conv2d`` with kernel and stride ``p``.)
    """

    def __init__(self, *, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_chans, dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(patchify(images, self.patch_size))


class PixelEmbed(nn.Module):
    """TNT/TITN pixel embedding: ``(B, C, H, W) -> (B·N, P, inner_dim)``.

    Each ``m × m`` pixel sub-patch is linearly embedded to ``inner_dim`` and a pixel position
    embedding ``(1, P, inner_dim)`` is added. The position embedding is **shared by all patches**:
    it says where a pixel sits inside its patch, not where the patch sits in the image.
    """

    def __init__(self, *, patch_size: int, pixel_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pixel_size = pixel_size
        self.num_pixels = (patch_size // pixel_size) ** 2
        self.proj = nn.Linear(pixel_size * pixel_size * in_chans, dim)
        self.pixel_pos = nn.Parameter(torch.zeros(1, self.num_pixels, dim))

    def forward(self, images: Tensor) -> Tensor:
        pixels = rearrange(pixelify(images, self.patch_size, self.pixel_size), "b n p f -> (b n) p f")
        return self.proj(pixels) + self.pixel_pos


class PixelToPatch(nn.Module):
    """Flatten a patch's pixel tokens and project them to a patch token: LayerNorm → Linear.

    ``(B·N, P, c) -> (B, N, D)``. Used once to make the first patch tokens, and in every block as
    the *patch residual* that carries the inner (local) stream into the outer (global) one.
    """

    def __init__(self, *, num_pixels: int, inner_dim: int, outer_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_pixels * inner_dim)
        self.proj = nn.Linear(num_pixels * inner_dim, outer_dim)

    def forward(self, pixels: Tensor, batch_size: int) -> Tensor:
        flat = rearrange(pixels, "(b n) p c -> b n (p c)", b=batch_size)
        return self.proj(self.norm(flat))
