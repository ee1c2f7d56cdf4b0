"""Scaled dot-product attention and multi-head self-attention (paper §3.1.1, eq. 1–3).

* :func:`scaled_dot_product_attention` is eq. 1 written out with an explicit softmax. It is the
  lesson, and it returns the attention weights so they can be looked at.
* :class:`MultiHeadAttention` (eq. 2–3) has one fast path: PyTorch's fused
  :func:`torch.nn.functional.scaled_dot_product_attention`, the same function without the weights
  ever being stored. ``fused = False`` takes eq. 1 written out instead, and so does a layer while
  :func:`titn_edu.capture_attention` records its weights. ``tests/test_attention.py`` checks that
  the two paths agree, outputs and gradients.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["scaled_dot_product_attention", "MultiHeadAttention"]


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    """Clear errors for inputs eq. 1 cannot take (names the problem and the fix)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (..., tokens, features); got {type(t).__name__}.")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point; got dtype {t.dtype}. Convert it with {name}.float().")
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(f"q, k and v need at least 2 dimensions (..., tokens, features); got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}.")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys must share their feature size d_k; got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}. Project them to the same size first.")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values must have the same number of tokens; got k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)}.")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a boolean tensor (True = may attend); got {got}. Use mask.bool().")
        try:
            torch.broadcast_shapes(mask.shape, (*q.shape[:-1], k.shape[-2]))
        except RuntimeError:
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to the attention scores "
                             f"(..., L, S) = {(*q.shape[:-1], k.shape[-2])}.") from None


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Eq. 1: :math:`\mathrm{Attention}(Q, K, V) = \mathrm{softmax}(QK^T / \sqrt{d_k})\,V`.

    Args:
        q: queries ``(..., L, d_k)``.
        k: keys ``(..., S, d_k)``.
        v: values ``(..., S, d_v)``.
        mask: optional boolean ``(..., L, S)``; ``True`` marks pairs that may attend.

    Returns:
        ``(output, weights)``: output ``(..., L, d_v)`` and the softmax weights ``(..., L, S)``,
        whose rows sum to 1.
    """
    _check_qkv(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    r"""Multi-head self-attention, eq. 2–3.

    :math:`\mathrm{MultiHead}(X) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h) W^O`
    with :math:`\mathrm{head}_i = \mathrm{Attention}(X W_i^Q, X W_i^K, X W_i^V)`.

    The per-head projections :math:`W_i^Q, W_i^K, W_i^V` are stored together as one linear layer
    ``qkv`` of shape ``(3 * dim, dim)`` (one matrix multiply instead of ``3h``); ``proj`` is
    :math:`W^O`. ``(B, T, dim) -> (B, T, dim)``.

    Args:
        dim: token size; must be divisible by ``num_heads``.
        num_heads: number of heads ``h``; each head has ``dim // num_heads`` features.
        qkv_bias: add a bias to the query/key/value projection. Off by default, as in eq. 3 and
            TNT; the original ViT and DeiT code has one (``qkv_bias=True``).

    Attributes:
        fused: compute eq. 1–2 with PyTorch's fused kernel (default). ``False`` writes eq. 1 out
            (:func:`scaled_dot_product_attention`); both give the same result. On CPU the fused
            kernel has first derivatives only: for gradients of gradients, use ``False``.
        recorder: ``None``, or a callable that receives the weights ``(B, h, T, T)`` of every
            forward pass (then eq. 1 is written out, whatever ``fused`` says). Set by
            :func:`titn_edu.capture_attention`.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be positive; got dim={dim}, num_heads={num_heads}.")
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}: each head needs dim / num_heads "
                             f"features. Choose num_heads among the divisors of {dim}.")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True
        self.recorder: Callable[[Tensor], None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"MultiHeadAttention expects a torch.Tensor of tokens; got {type(x).__name__}.")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MultiHeadAttention(dim={self.dim}) expects tokens of shape (batch, tokens, {self.dim}); got "
                f"{tuple(x.shape)}. Add a batch axis with x.unsqueeze(0), or build it with dim=x.shape[-1].")
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        if self.fused and self.recorder is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # eq. 1 written out; the weights are materialised (and recorded if asked)
            out, weights = scaled_dot_product_attention(q, k, v)
            if self.recorder is not None:
                self.recorder(weights)
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))  # Concat(head_1..head_h) W^O

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, fused={self.fused}"
