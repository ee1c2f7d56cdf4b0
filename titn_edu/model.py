"""The Transformer-in-Transformer Network with knowledge distillation (paper §3.2, §3.6, Fig. 2).

ViT, DeiT, TNT and TITN are switches of one model:

============  ==========  ===========
model         ``inner``   ``distill``
============  ==========  ===========
ViT           False       False
DeiT          False       True
TNT           True        False
TITN          True        True
============  ==========  ===========
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .blocks import TITNBlock
from .embeddings import PatchEmbed, PixelEmbed, PixelToPatch

__all__ = ["TITN", "build_model", "list_models", "MODEL_PRESETS", "count_parameters", "set_fast_path"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


@torch.no_grad()
def _trunc_normal(tensor: Tensor, std: float = 0.02) -> None:
    """Normal(0, std²) cut at ±2 std, by inverse-CDF sampling (one vectorised pass, no rejection loop)."""
    if tensor.is_meta:
        return
    cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
    lo, hi = cdf(-2.0), cdf(2.0)
    tensor.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-2 * std, 2 * std)


class TITN(nn.Module):
    """Transformer-in-Transformer Network with class and distillation tokens.

    Token order (outer sequence): ``[class, patch_1 … patch_N, distillation]``; learned position
    embeddings for all of them.

    Output of ``forward``:

    * ``distill=True`` and ``model.train()``: a pair ``(class_logits, distill_logits)``;
    * ``distill=True`` and ``model.eval()``: one tensor, the mean of the two heads' logits (DeiT);
    * ``distill=False``: one tensor, always.

    All arguments are keyword-only; see the README for the presets of the paper's Table 1.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int = 32,
        in_chans: int = 3,
        patch_size: int = 8,
        pixel_size: int = 2,
        outer_dim: int = 192,
        inner_dim: int = 12,
        depth: int = 12,
        outer_heads: int = 3,
        inner_heads: int = 2,
        mlp_ratio: float = 4.0,
        inner: bool = True,
        distill: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = dict(
            num_classes=num_classes, img_size=img_size, in_chans=in_chans, patch_size=patch_size,
            pixel_size=pixel_size, outer_dim=outer_dim, inner_dim=inner_dim, depth=depth,
            outer_heads=outer_heads, inner_heads=inner_heads, mlp_ratio=mlp_ratio, inner=inner,
            distill=distill, drop_path=drop_path,
        )
        self._validate(**self.config)
        self.num_classes, self.img_size, self.in_chans = num_classes, img_size, in_chans
        self.inner, self.distill = bool(inner), bool(distill)
        self.num_patches = (img_size // patch_size) ** 2
        self.num_pixels = (patch_size // pixel_size) ** 2 if inner else 0
        self.num_prefix, self.num_suffix = 1, int(distill)
        self.num_tokens = self.num_prefix + self.num_patches + self.num_suffix

        # Embeddings: pixel stream -> first patch tokens (TNT/TITN), or raw patches (ViT/DeiT).
        if inner:
            self.pixel_embed = PixelEmbed(patch_size=patch_size, pixel_size=pixel_size, in_chans=in_chans, dim=inner_dim)
            self.patch_embed = PixelToPatch(num_pixels=self.num_pixels, inner_dim=inner_dim, outer_dim=outer_dim)
        else:
            self.pixel_embed = None
            self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, dim=outer_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, outer_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, outer_dim)) if distill else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, outer_dim))

        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            TITNBlock(
                outer_dim=outer_dim, inner_dim=inner_dim, num_pixels=self.num_pixels,
                outer_heads=outer_heads, inner_heads=inner_heads, mlp_ratio=mlp_ratio,
                drop_path=rate, inner=inner, num_prefix=self.num_prefix, num_suffix=self.num_suffix,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(outer_dim)
        self.head = nn.Linear(outer_dim, num_classes)
        self.head_dist = nn.Linear(outer_dim, num_classes) if distill else None
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _validate(*, num_classes, img_size, in_chans, patch_size, pixel_size, outer_dim, inner_dim,
                  depth, outer_heads, inner_heads, mlp_ratio, inner, distill, drop_path) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}.")
        for name, value in [("img_size", img_size), ("in_chans", in_chans), ("patch_size", patch_size),
                            ("outer_dim", outer_dim), ("depth", depth), ("outer_heads", outer_heads)]:
            _positive_int(name, value)
        if img_size % patch_size:
            raise ValueError(
                f"img_size={img_size} is not divisible by patch_size={patch_size}. Use a patch size that "
                f"divides the image (e.g. {[d for d in range(1, img_size + 1) if img_size % d == 0]}), "
                f"or resize the images."
            )
        if outer_dim % outer_heads:
            raise ValueError(
                f"outer_dim={outer_dim} is not divisible by outer_heads={outer_heads}. Choose a head "
                f"count that divides {outer_dim}."
            )
        if inner:
            for name, value in [("pixel_size", pixel_size), ("inner_dim", inner_dim), ("inner_heads", inner_heads)]:
                _positive_int(name, value)
            if patch_size % pixel_size:
                raise ValueError(
                    f"patch_size={patch_size} is not divisible by pixel_size={pixel_size}. Use a pixel "
                    f"size that divides the patch (e.g. {[d for d in range(1, patch_size + 1) if patch_size % d == 0]})."
                )
            if inner_dim % inner_heads:
                raise ValueError(
                    f"inner_dim={inner_dim} is not divisible by inner_heads={inner_heads}. Choose a head "
                    f"count that divides {inner_dim}."
                )
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0; got {mlp_ratio!r}.")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1); got {drop_path!r}.")

    def reset_parameters(self) -> None:
        """Truncated normal (std 0.02, cut at ±2 std) for linear weights, position embeddings and tokens;
        zero biases; LayerNorm weight 1, bias 0.

        (``nn.init.trunc_normal_`` cuts at ±2 in absolute units by default, which for std 0.02 is no
        cut at all; the bounds are given explicitly here.)
        """
        for p in [self.cls_token, self.dist_token, self.pos_embed]:
            if p is not None:
                _trunc_normal(p)
        if self.pixel_embed is not None:
            _trunc_normal(self.pixel_embed.pixel_pos)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- forward
    def check_input(self, images: Tensor) -> None:
        """Raise a clear ``ValueError``/``TypeError`` unless ``images`` is ``(B, in_chans, img_size, img_size)`` float."""
        if not isinstance(images, Tensor):
            raise TypeError(f"TITN expects a torch.Tensor of images; got {type(images).__name__}.")
        if not images.is_floating_point():
            raise ValueError(
                f"TITN expects floating-point images, got dtype {images.dtype}. Convert and normalise "
                f"first, e.g. images.float() / 255 followed by Normalize(mean, std) "
                f"(titn_edu.data's transforms do this)."
            )
        expected = (self.in_chans, self.img_size, self.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            hint = ""
            if images.dim() == 3 and tuple(images.shape) == expected:
                hint = " This looks like a single image: add a batch axis with images.unsqueeze(0)."
            elif images.dim() == 4 and images.shape[-1] == self.in_chans:
                hint = " This looks channels-last (B, H, W, C): use images.permute(0, 3, 1, 2)."
            elif images.dim() == 4 and images.shape[1] != self.in_chans:
                hint = f" The model was built with in_chans={self.in_chans}; build it with in_chans={images.shape[1]} or convert the images."
            elif images.dim() == 4:
                hint = f" The model was built with img_size={self.img_size}; resize the images or build the model with img_size={images.shape[-1]}."
            raise ValueError(
                f"TITN expects images of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}); "
                f"got {tuple(images.shape)}.{hint}"
            )

    def embed(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        """Images -> ``(pixel tokens (B·N, P, c) or None, outer tokens (B, T, D))`` with tokens and positions."""
        batch = images.shape[0]
        if self.pixel_embed is not None:
            pixels = self.pixel_embed(images)
            patches = self.patch_embed(pixels, batch)
        else:
            pixels, patches = None, self.patch_embed(images)
        parts = [self.cls_token.expand(batch, -1, -1), patches]
        if self.dist_token is not None:
            parts.append(self.dist_token.expand(batch, -1, -1))
        return pixels, torch.cat(parts, dim=1) + self.pos_embed

    def forward_features(self, images: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> normalised outer tokens ``(B, T, D)`` (class first, distillation last)."""
        self.check_input(images)
        pixels, tokens = self.embed(images)
        for block in self.blocks:
            pixels, tokens = block(pixels, tokens)
        return self.norm(tokens)

    def forward_head(self, tokens: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Outer tokens ``(B, T, D)`` -> logits, as described in the class docstring: the class head reads
        the first token, the distillation head the last."""
        logits = self.head(tokens[:, 0])
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(tokens[:, -1])
        if self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Images -> logits: ``forward_head(forward_features(images))``."""
        return self.forward_head(self.forward_features(images))

    def extra_repr(self) -> str:
        kind = {(False, False): "ViT", (False, True): "DeiT", (True, False): "TNT", (True, True): "TITN"}
        return f"variant={kind[(self.inner, self.distill)]}, tokens={self.num_tokens}, pixels_per_patch={self.num_pixels}"


# ---------------------------------------------------------------------- presets
_PAPER = dict(patch_size=8, pixel_size=2, outer_dim=192, inner_dim=12, depth=12, outer_heads=3, inner_heads=2, mlp_ratio=4.0)
_TINY = dict(patch_size=8, pixel_size=2, outer_dim=64, inner_dim=8, depth=4, outer_heads=2, inner_heads=2, mlp_ratio=2.0)

#: Constructor arguments of every name accepted by :func:`build_model`.
#: The first five are the paper's Table 1; ``*-tiny`` are small presets for CPU teaching runs.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "vit": dict(_PAPER, inner=False, distill=False),
    "deit": dict(_PAPER, inner=False, distill=True),
    "tnt": dict(_PAPER, inner=True, distill=False),
    "titn": dict(_PAPER, inner=True, distill=True),
    "titn-large-patch": dict(_PAPER, patch_size=16, pixel_size=4, inner=True, distill=True),
    "vit-tiny": dict(_TINY, inner=False, distill=False),
    "deit-tiny": dict(_TINY, inner=False, distill=True),
    "tnt-tiny": dict(_TINY, inner=True, distill=False),
    "titn-tiny": dict(_TINY, inner=True, distill=True),
    "titn-tiny-large-patch": dict(_TINY, patch_size=16, pixel_size=4, inner=True, distill=True),
}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(MODEL_PRESETS)


def build_model(name: str, *, num_classes: int, img_size: int = 32, in_chans: int = 3, **overrides: Any) -> TITN:
    """Build a preset: ``"vit"``, ``"deit"``, ``"tnt"``, ``"titn"``, ``"titn-large-patch"`` (Table 1) or a ``*-tiny`` CPU preset.

    ``overrides`` replace any constructor argument of :class:`TITN` (e.g. ``depth=6``, ``drop_path=0.1``).
    """
    if not isinstance(name, str) or name.lower() not in MODEL_PRESETS:
        raise ValueError(f"unknown model name {name!r}; choose one of {list_models()}.")
    unknown = set(overrides) - set(TITN.__init__.__kwdefaults__)
    if unknown:
        raise ValueError(
            f"unknown model argument(s) {sorted(unknown)}; TITN accepts {sorted(TITN.__init__.__kwdefaults__)}."
        )
    kwargs = {**MODEL_PRESETS[name.lower()], **overrides}
    return TITN(num_classes=num_classes, img_size=img_size, in_chans=in_chans, **kwargs)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def set_fast_path(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every attention layer in ``model`` between its fast path and eq. 1 written out; returns ``model``.

    ``False`` is the reference path: :attr:`MultiHeadAttention.fused` off everywhere, so every
    attention materialises its weights (eq. 1), and accelerated blocks (:mod:`titn_edu.accel`),
    whose kernel computes attention fused, stand aside and run on the PyTorch operators too. The
    results agree with the fast path to float32 rounding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_fast_path expects a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False; got {enabled!r}.")
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.fused = enabled
    return model
