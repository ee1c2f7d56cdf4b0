"""Transformer blocks: the inner (pixel) block, the outer (patch) block, and the TITN block (Fig. 1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .embeddings import PixelToPatch
from .layers import DropPath, Mlp

__all__ = ["TransformerBlock", "TITNBlock"]


class TransformerBlock(nn.Module):
    r"""A pre-norm transformer encoder block (used as both the inner and the outer transformer).

    .. math::
        X' = X + \mathrm{MSA}(\mathrm{LN}(X)), \qquad Y = X' + \mathrm{MLP}(\mathrm{LN}(X'))

    with MSA from eq. 2–3, MLP from eq. 4–5 and LN from eq. 6. ``(B, T, dim) -> (B, T, dim)``.

    Attributes:
        accelerator: ``None`` (default), or an optional compiled kernel that computes this same
            block faster: the one place where the library's speed code plugs into the model. It is
            set only by :func:`titn_edu.accel.accelerate`, and takes over a call only when its
            ``applies(block, x)`` says so; everything below is the reference it is tested against.
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.accelerator = None

    def forward(self, x: Tensor) -> Tensor:
        if self.accelerator is not None and self.accelerator.applies(self, x):
            return self.accelerator(self, x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TITNBlock(nn.Module):
    """One TITN block (paper §3.2, Fig. 1, Algorithm 1 lines 3–7).

    1. **Inner** transformer over each patch's pixel tokens ``(B·N, P, c)`` (local features).
    2. **Patch residual**: the pixel tokens of each patch are flattened, LayerNorm'd and projected to
       the outer size, zero-padded with one row for the class token (first) and one for the
       distillation token (last), and added to the patch tokens.
    3. **Outer** transformer over the patch sequence ``(B, T, D)`` (global features).

    With ``inner=False`` steps 1–2 are skipped and this is a plain ViT/DeiT block.

    Args:
        outer_dim, inner_dim: token sizes of the patch and pixel streams.
        num_pixels: pixel tokens per patch ``P``.
        outer_heads, inner_heads: heads of the two attentions.
        num_prefix, num_suffix: tokens before / after the patch tokens (class / distillation).
    """

    def __init__(self, *, outer_dim: int, inner_dim: int, num_pixels: int, outer_heads: int, inner_heads: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, inner: bool = True, num_prefix: int = 1,
                 num_suffix: int = 1) -> None:
        super().__init__()
        self.num_prefix, self.num_suffix = num_prefix, num_suffix
        if inner:
            self.inner = TransformerBlock(dim=inner_dim, num_heads=inner_heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
            self.patch_residual = PixelToPatch(num_pixels=num_pixels, inner_dim=inner_dim, outer_dim=outer_dim)
        else:
            self.inner = self.patch_residual = None
        self.outer = TransformerBlock(dim=outer_dim, num_heads=outer_heads, mlp_ratio=mlp_ratio, drop_path=drop_path)

    def forward(self, pixels: Tensor | None, tokens: Tensor) -> tuple[Tensor | None, Tensor]:
        """``pixels (B·N, P, c)`` or ``None``, ``tokens (B, T, D)`` -> the same shapes."""
        if self.inner is not None:
            pixels = self.inner(pixels)
            residual = self.patch_residual(pixels, tokens.shape[0])  # (B, N, D)
            # Zero rows for the class token (front) and distillation token (back).
            tokens = tokens + F.pad(residual, (0, 0, self.num_prefix, self.num_suffix))
        return pixels, self.outer(tokens)
