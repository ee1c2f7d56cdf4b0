"""Scaled dot-product and multi-head self-attention (paper §3.1.1, eq. 1–3).

Two paths compute the same thing:

* :func:`scaled_dot_product_attention` is eq. 1 written out with an explicit softmax. It is the
  lesson, and it returns the attention weights so they can be looked at.
* :class:`MultiHeadAttention` (eq. 2–3) takes a fast path by default, no weights materialised:
  PyTorch's fused :func:`torch.nn.functional.scaled_dot_product_attention` (``"sdpa"``), or, for
  short sequences on CPU (TITN's 16 pixel tokens and 18 patch tokens), batched matrix multiplies
  head by head (``"per_head"``) or, for small heads, the same with every product computed
  transposed and a written-out backward pass (``"transposed"``). Which of these is fastest
  depends on the processor, so on CPU the module times them once per shape and keeps the fastest
  (:mod:`titn_edu.tuning`); :attr:`MultiHeadAttention.kernel` names one by hand. It falls back to
  the explicit path when ``fused`` is off or while :func:`titn_edu.capture_attention` is
  recording weights.

``tests/test_fast_path.py`` checks that all paths give the same outputs and gradients;
``benchmarks/attention_paths.py`` times them.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import tuning
from .linear import Linear

__all__ = ["scaled_dot_product_attention", "MultiHeadAttention", "KERNELS"]


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
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (..., tokens, features); got {type(t).__name__}.")
        if not t.is_floating_point():
            raise ValueError(
                f"{name} must be floating point; got dtype {t.dtype}. Convert it with {name}.float()."
            )
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(
            f"q, k and v need at least 2 dimensions (..., tokens, features); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"queries and keys must share their feature size d_k; got q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}. Project them to the same size first."
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"keys and values must have the same number of tokens; got k {tuple(k.shape)} and "
            f"v {tuple(v.shape)}."
        )
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a boolean tensor (True = may attend); got {got}. Use mask.bool().")
        try:
            torch.broadcast_shapes(mask.shape, (*q.shape[:-1], k.shape[-2]))
        except RuntimeError:
            raise ValueError(
                f"mask {tuple(mask.shape)} does not broadcast to the attention scores "
                f"(..., L, S) = {(*q.shape[:-1], k.shape[-2])}."
            ) from None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


#: On CPU, attention over at most ``_PER_HEAD_MAX_TOKENS`` tokens may also run head by head as
#: batched matrix multiplies: :func:`_attention_per_head`, and for heads of at most
#: ``_SMALL_HEAD_DIM`` features (TITN's inner stream) :class:`_PerHeadAttention`.
_SMALL_HEAD_DIM = 16
_PER_HEAD_MAX_TOKENS = 128


def _split_heads(qkv: Tensor, num_heads: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(B, T, 3·h·d)`` -> ``(q_1..q_h), (k_1..k_h), (v_1..v_h)``, each a strided ``(B, T, d)`` view (no copy)."""
    parts = qkv.split(qkv.shape[-1] // (3 * num_heads), dim=-1)
    return parts[:num_heads], parts[num_heads:2 * num_heads], parts[2 * num_heads:]


def _attention_per_head(qkv: Tensor, num_heads: int) -> Tensor:
    r"""Eq. 1–2 head by head, ``(B, T, 3·h·d) -> (B, T, h·d)``: two batched matrix multiplies per head.

    For short sequences on CPU this can be faster than the fused kernel (TITN's outer stream on an
    AMD Zen 4; its inner stream on an Intel Xeon); autograd writes the backward pass.
    """
    q, k, v = _split_heads(qkv, num_heads)
    scale = q[0].shape[-1] ** -0.5
    heads = [torch.bmm(torch.bmm(q[i], k[i].transpose(1, 2)).mul_(scale).softmax(dim=-1), v[i]) for i in range(num_heads)]
    return torch.cat(heads, dim=-1)


class _PerHeadAttention(torch.autograd.Function):
    r"""Eq. 1–2 for many short sequences with small heads on CPU (TITN's inner stream).

    ``(B, T, 3·h·d) -> (B, T, h·d)``: per head, :math:`A = \mathrm{softmax}(QK^T/\sqrt{d})` and
    :math:`AV`, then the heads are concatenated. For TITN's 16 pixel tokens with 6 features per
    head, PyTorch's fused CPU kernel, built for long sequences, is about half as fast as batched
    matrix multiplies. Among those, a product that *outputs* ``d × T`` is 2–3× faster than one
    that outputs ``T × d``, so every such product is computed transposed — :math:`(AV)^T = V^T A^T`
    and, in the backward pass written out here, :math:`dV^T = dO^T A`, :math:`dQ^T = K^T dS^T`,
    :math:`dK^T = Q^T dS` — and the transposes are free views. That holds on the AMD Zen 4 it
    was written on; on an Intel Xeon the orientations swap and this is the slowest kernel, hence
    the timing in :func:`_choose_kernel`. ``tests/test_fast_path.py`` checks outputs and
    gradients against eq. 1; ``benchmarks/attention_paths.py`` times the paths.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, num_heads: int) -> Tensor:
        q, k, v = _split_heads(qkv, num_heads)
        scale = q[0].shape[-1] ** -0.5
        weights = [torch.bmm(q[i], k[i].transpose(1, 2)).mul_(scale).softmax(dim=-1) for i in range(num_heads)]
        heads = [torch.bmm(v[i].transpose(1, 2), weights[i].transpose(1, 2)) for i in range(num_heads)]  # (AV)^T
        ctx.save_for_backward(qkv, *weights)
        ctx.num_heads, ctx.scale = num_heads, scale
        return torch.cat([o.transpose(1, 2) for o in heads], dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        qkv, *weights = ctx.saved_tensors
        q, k, v = _split_heads(qkv, ctx.num_heads)
        d = q[0].shape[-1]
        grad_q, grad_k, grad_v = [], [], []
        for i, a in enumerate(weights):
            grad_out = grad[..., i * d:(i + 1) * d]
            grad_v.append(torch.bmm(grad_out.transpose(1, 2), a))  # dV^T = dO^T A
            grad_a = torch.bmm(grad_out, v[i].transpose(1, 2))  # dA = dO V^T
            grad_s = torch._softmax_backward_data(grad_a, a, -1, a.dtype).mul_(ctx.scale)
            grad_q.append(torch.bmm(k[i].transpose(1, 2), grad_s.transpose(1, 2)))  # dQ^T = K^T dS^T
            grad_k.append(torch.bmm(q[i].transpose(1, 2), grad_s))  # dK^T = Q^T dS
        return torch.cat([g.transpose(1, 2) for g in grad_q + grad_k + grad_v], dim=-1), None


def _attention_sdpa(qkv: Tensor, num_heads: int) -> Tensor:
    """Eq. 1–2 with PyTorch's fused kernel, ``(B, T, 3·h·d) -> (B, T, h·d)``.

    Splitting along the last axis (rather than unbinding a permuted ``(three, b, h, t, d)`` view)
    lets the backward pass write the gradient of ``qkv`` with one concatenation instead of a stack
    followed by a permuted copy.
    """
    q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=num_heads) for t in qkv.chunk(3, dim=-1))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h t d -> b t (h d)")


def _attention_transposed(qkv: Tensor, num_heads: int) -> Tensor:
    return _PerHeadAttention.apply(qkv, num_heads)


#: The fast attention kernels, by name: each maps ``(qkv (B, T, 3·h·d), h)`` to ``(B, T, h·d)``.
KERNELS = {"sdpa": _attention_sdpa, "per_head": _attention_per_head, "transposed": _attention_transposed}


def _timing_runs(qkv: Tensor, num_heads: int, names: tuple[str, ...], needs_grad: bool):
    """``{name: run}`` for :func:`tuning.fastest`: each run calls one kernel on random inputs shaped like ``qkv``."""
    gen = torch.Generator().manual_seed(0)  # the global random stream is left alone
    x = torch.randn(qkv.shape, dtype=qkv.dtype, generator=gen).requires_grad_(needs_grad)
    grad = torch.randn((*qkv.shape[:-1], qkv.shape[-1] // 3), dtype=qkv.dtype, generator=gen) if needs_grad else None

    def run(kernel) -> None:
        if grad is None:
            with torch.no_grad():
                kernel(x, num_heads)
        else:  # training: forward and backward
            with torch.enable_grad():
                torch.autograd.grad(kernel(x, num_heads), x, grad)
    return {name: functools.partial(run, KERNELS[name]) for name in names}


def _choose_kernel(qkv: Tensor, num_heads: int) -> str:
    """The fast kernel for this call (module docstring): fixed off CPU and for long sequences, timed otherwise."""
    tokens, head_dim = qkv.shape[1], qkv.shape[-1] // (3 * num_heads)
    if qkv.device.type != "cpu" or tokens > _PER_HEAD_MAX_TOKENS:
        return "sdpa"
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        # Plain operators: torch.compile fuses its softmax, and a dispatch mode sees every product
        # (FlopCounterMode has no formula for the fused kernel's CPU variant: it would count 0).
        return "per_head"
    names = ("transposed", "per_head", "sdpa") if head_dim <= _SMALL_HEAD_DIM else ("per_head", "sdpa")
    needs_grad = torch.is_grad_enabled() and qkv.requires_grad
    key = ("attention", tuple(qkv.shape), num_heads, qkv.dtype, torch.get_num_threads(), needs_grad)
    return tuning.fastest(key, names, lambda: _timing_runs(qkv, num_heads, names, needs_grad))


class MultiHeadAttention(nn.Module):
    r"""Multi-head self-attention, eq. 2–3.

    :math:`\mathrm{MultiHead}(X) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h) W^O`
    with :math:`\mathrm{head}_i = \mathrm{Attention}(X W_i^Q, X W_i^K, X W_i^V)`.

    The per-head projections :math:`W_i^Q, W_i^K, W_i^V` are stored fused as one linear layer
    ``qkv`` of shape ``(3 * dim, dim)`` (one matrix multiply instead of ``3h``); ``proj`` is
    :math:`W^O`.

    Args:
        dim: token size; must be divisible by ``num_heads``.
        num_heads: number of heads ``h``; each head has ``dim // num_heads`` features.
        qkv_bias: add a bias to the query/key/value projection (off, as in ViT/TNT).

    Attributes:
        fused: take the fast path (default; see the module docstring). Set it to ``False`` for
            the explicit eq. 1 path; both give the same result. The ``"transposed"`` kernel
            writes its backward pass by hand and gives first derivatives only: for gradients of
            gradients use ``fused=False`` (or :func:`titn_edu.set_fast_path`).
        kernel: which fast kernel runs. ``"auto"`` (default): the fused kernel off CPU and for
            sequences over 128 tokens; on CPU otherwise the fastest of ``"transposed"`` (heads of
            at most 16 features), ``"per_head"`` and ``"sdpa"``, timed once per shape
            (:mod:`titn_edu.tuning`; with timing off, the first of those). A name from
            :data:`KERNELS` uses that kernel for every call.
    """

    _kernel = "auto"  # a class default, so modules pickled before the attribute existed still load

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be positive; got dim={dim}, num_heads={num_heads}.")
        if dim % num_heads != 0:
            raise ValueError(
                f"dim={dim} is not divisible by num_heads={num_heads}: each head needs "
                f"dim / num_heads features. Choose num_heads among the divisors of {dim}."
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.fused = True
        # Set by titn_edu.capture_attention: a callable taking the (B, h, T, T) weights.
        self._recorder = None

    def forward(self, x: Tensor, *, rows: slice | list[int] | None = None) -> Tensor:
        """``(B, T, dim) -> (B, T, dim)``.

        ``rows`` (optional): compute only these output tokens, ``(B, len(rows), dim)``. Their
        queries attend to all ``T`` keys and values, so each computed row equals the same row of
        the full output; the other rows' queries are never formed. TITN's last block uses this
        for the class and distillation tokens, the only ones its heads read.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"MultiHeadAttention expects a torch.Tensor of tokens; got {type(x).__name__}.")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape)
            raise ValueError(
                f"MultiHeadAttention(dim={self.dim}) expects tokens of shape (batch, tokens, {self.dim}); "
                f"got {got}. Add a batch axis with x.unsqueeze(0), or build it with dim=x.shape[-1]."
            )
        if rows is not None:
            return self._forward_rows(x, rows)
        qkv = self.qkv(x)  # (B, T, 3·dim), laid out as (three, head, d) along the last axis
        if not self.fused or self._recorder is not None:
            # Reference path: eq. 1 written out, weights materialised (and recorded if asked).
            q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
            return self._explicit(q, k, v)
        kernel = _choose_kernel(qkv, self.num_heads) if self._kernel == "auto" else self._kernel
        return self.proj(KERNELS[kernel](qkv, self.num_heads))

    @property
    def kernel(self) -> str:
        """The fast path's kernel: ``"auto"`` (default), or one of :data:`KERNELS` to use it everywhere."""
        return self._kernel

    @kernel.setter
    def kernel(self, name: str) -> None:
        if name != "auto" and name not in KERNELS:
            raise ValueError(f"kernel must be 'auto' or one of {sorted(KERNELS)}; got {name!r}.")
        self._kernel = name

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, weights = scaled_dot_product_attention(q, k, v)
        if self._recorder is not None:
            self._recorder(weights)
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))

    def _forward_rows(self, x: Tensor, rows: slice | list[int]) -> Tensor:
        """Attention output for the tokens ``x[:, rows]`` only: their queries against every key and value."""
        qkv = self.qkv(x)  # every token: the module runs as usual (hooks, summaries); unused queries are dropped
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.num_heads) for t in qkv.chunk(3, dim=-1))
        q = q[:, :, rows]
        if not self.fused or self._recorder is not None:
            return self._explicit(q, k, v)
        return self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h t d -> b t (h d)"))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, fused={self.fused}"
