r"""Part I, notebook 02 (attention): eq. 1, and eq. 2–3 with several heads (paper §3.1.1).

* :func:`attention` checks a student's scaled dot-product attention, eq. 1
  :math:`\mathrm{softmax}(QK^T/\sqrt{d_k})\,V`, against
  :func:`titn_edu.attention.scaled_dot_product_attention`;
* :func:`multi_head_attention` checks a student's multi-head attention class, eq. 2–3, against
  :class:`titn_edu.MultiHeadAttention` with the same weights.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from einops import rearrange
from torch import Tensor

from ..attention import MultiHeadAttention, scaled_dot_product_attention
from .harness import (Case, close, describe_shape, difference, first_hint, generator, keeps_global_rng,
                      paired_modules, passed, require_callable, require_class)

__all__ = ["attention", "multi_head_attention"]


# --------------------------------------------------------------------------------- eq. 1
@keeps_global_rng
def attention(student_fn: Callable, *, mask: bool = False) -> None:
    """Check eq. 1 against :func:`titn_edu.attention.scaled_dot_product_attention`.

    ``student_fn(q, k, v)`` (and ``student_fn(q, k, v, mask=mask)`` when ``mask=True``) must return
    ``(output, weights)``: output ``(..., L, d_v)`` and softmax weights ``(..., L, S)``. Cases cover
    batched and multi-head shapes, different query/key lengths and ``d_v != d_k``.
    """
    require_callable("attention", student_fn, "a function (q, k, v) -> (output, weights)")
    check, reference = "attention", "titn_edu.attention.scaled_dot_product_attention"
    cases = _attention_cases(mask)
    total = len(cases)
    for i, (q, k, v, m) in enumerate(cases):
        desc = f"q {describe_shape(q)}, k {describe_shape(k)}, v {describe_shape(v)}"
        case = Case(check, i, total, desc + (f", mask {describe_shape(m)}" if m is not None else ""))
        want_out, want_w = scaled_dot_product_attention(q, k, v, mask=m)
        inputs = dict(q=q.clone(), k=k.clone(), v=v.clone())
        kwargs = {"mask": m.clone()} if m is not None else {}
        with torch.no_grad():
            result = case.call(student_fn, inputs["q"], inputs["k"], inputs["v"], **kwargs)
        case.unchanged(inputs, dict(q=q, k=k, v=v))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            case.fail(f"expected a pair (output, weights); got {type(result).__name__}.",
                      "return both: `return weights @ v, weights`.")
        out, w = result
        problem = difference(w, want_w, "weights")
        if problem:
            case.fail(problem, _attention_hint(q, k, v, m, w))
        problem = difference(out, want_out, "output")
        if problem:
            case.fail(problem, "the weights are right, so look at the last step: output = weights @ v.")
    passed(check, total, reference)


def _attention_cases(mask: bool) -> list[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """``(q, k, v, mask)``: batched and multi-head shapes, L != S, d_v != d_k; with ``mask``, two masked cases."""
    shapes = [
        ((2, 5, 8), (2, 5, 8), (2, 5, 8), 1.0),
        ((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 5), 1.0),
        ((1, 4, 6, 64), (1, 4, 6, 64), (1, 4, 6, 64), 1.0),
        ((3, 10, 32), (3, 4, 32), (3, 4, 12), 2.0),
    ]
    cases = []
    for seed, (qs, ks, vs, gain) in enumerate(shapes):
        g = generator(seed)
        cases.append((gain * torch.randn(qs, generator=g), torch.randn(ks, generator=g), torch.randn(vs, generator=g), None))
    if mask:
        g = generator(100)
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        cases.append((torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g),
                      torch.randn(2, 6, 4, generator=g), causal.expand(2, 6, 6)))
        rnd = torch.rand(2, 2, 5, 7, generator=g) < 0.6
        rnd[..., 0] = True  # every query sees at least one key
        cases.append((torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g),
                      torch.randn(2, 2, 7, 3, generator=g), rnd))
    return cases


def _attention_hint(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, weights: Any) -> str | None:
    """Which known mistake (no √d_k, softmax over the wrong axis, mask ignored …) produced ``weights``."""
    if not isinstance(weights, Tensor) or weights.shape != q.shape[:-1] + k.shape[-2:-1]:
        return "weights should be (..., L, S): one row per query, one column per key (q @ k.transpose(-2, -1))."
    d_k, d_v = q.shape[-1], v.shape[-1]
    raw = q @ k.transpose(-2, -1)

    def soft(scores: Tensor, dim: int = -1) -> Tensor:
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=dim)

    w = weights.detach()
    if not torch.allclose(w.sum(-1), torch.ones(()), atol=1e-4):
        if torch.allclose(w.sum(-2), torch.ones(()), atol=1e-4):
            return "the columns of your weights sum to 1, not the rows: take the softmax over the keys, the last axis (dim=-1)."
        return "each row of the weights should sum to 1: apply a softmax over the keys (dim=-1)."
    mistakes = [
        (soft(raw), "you forgot to scale the scores: divide q @ k^T by √d_k before the softmax."),
        (soft(raw / d_k), "you divided by d_k; eq. 1 divides by its square root √d_k."),
        (soft(raw * math.sqrt(d_k)), "you multiplied by √d_k; eq. 1 divides by it."),
        (soft(raw / math.sqrt(d_v)) if d_v != d_k else None,
         "you scaled by the value size; d_k is the size of the queries and keys (q.shape[-1])."),
        (soft(raw / math.sqrt(d_k)).transpose(-2, -1) if q.shape[-2] == k.shape[-2] else None,
         "your weights are transposed: weights[..., i, j] is how much query i attends to key j."),
    ]
    if mask is not None:
        mistakes.append(((raw / math.sqrt(d_k)).softmax(-1),
                         "the mask is ignored: set masked scores to -inf before the softmax (scores.masked_fill(~mask, float('-inf')))."))
    return first_hint(w, mistakes)


# ---------------------------------------------------------------------------- eq. 2–3
@keeps_global_rng
def multi_head_attention(StudentClass: type) -> None:
    """Check eq. 2–3 against :class:`titn_edu.MultiHeadAttention`.

    ``StudentClass(dim, num_heads, qkv_bias=...)`` must build a module whose parameters are named and
    shaped like the library's: ``qkv`` = ``nn.Linear(dim, 3 * dim, bias=qkv_bias)`` holding
    :math:`W^Q, W^K, W^V` for all heads (output features ordered ``(three, head, d)``, i.e.
    ``rearrange(qkv(x), "b t (three h d) -> three b h t d")``) and ``proj`` = ``nn.Linear(dim, dim)``
    (:math:`W^O`). The reference weights are copied in; ``module(x)`` with ``x`` of shape
    ``(B, T, dim)`` must return ``(B, T, dim)``.
    """
    check, reference = "multi_head_attention", "titn_edu.MultiHeadAttention"
    require_class(check, StudentClass, reference)
    configs = [(8, 1, 2, 5, False), (12, 3, 2, 7, False), (16, 4, 1, 10, True), (24, 6, 2, 17, False)]
    total = len(configs)
    for i, (dim, heads, batch, tokens, bias) in enumerate(configs):
        case = Case(check, i, total, f"dim={dim}, num_heads={heads}, qkv_bias={bias}, x ({batch}, {tokens}, {dim})")
        g = generator(10 + i)
        ref, student = paired_modules(check, StudentClass, MultiHeadAttention(dim, heads, qkv_bias=bias), reference,
                                      (dim, heads), {"qkv_bias": bias}, g)
        x = torch.randn(batch, tokens, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = case.call(student, x.clone())
            problem = difference(got, want, "output")
            if problem:
                case.fail(problem, _heads_hint(ref, x, got, want))
    passed(check, total, reference)


def _heads_hint(ref: MultiHeadAttention, x: Tensor, got: Any, want: Tensor) -> str | None:
    """Which known mistake in splitting, scaling or merging the heads produced ``got``."""
    if not (isinstance(got, Tensor) and got.shape == want.shape):
        return None
    dim, heads = x.shape[-1], ref.num_heads
    mistakes = [
        (dict(split="(three h d)", merge="(h d)", scale_dim=dim),
         "scale each head by √(head size) = √(dim // num_heads), not √dim."),
        (dict(split="(h three d)", merge="(h d)", scale_dim=dim // heads),
         "split qkv as 'b t (three h d) -> three b h t d': all queries first, then keys, then values."),
        (dict(split="(three d h)", merge="(h d)", scale_dim=dim // heads),
         "each head owns a contiguous block of d features: split with '(three h d)', not '(three d h)'."),
        (dict(split="(three h d)", merge="(d h)", scale_dim=dim // heads),
         "concatenate the heads with 'b h t d -> b t (h d)' (head by head), not '(d h)'."),
    ]
    for kwargs, text in mistakes:
        if close(got, _mha_variant(ref, x, **kwargs)):
            return text
    if heads == 1:
        return ("with a single head it already differs: check eq. 1 (checks.attention) and that "
                "proj is applied after concatenating the heads.")
    return "one head works but several do not: check how you split qkv into heads and merge them back."


def _mha_variant(ref: MultiHeadAttention, x: Tensor, *, split: str, merge: str, scale_dim: int) -> Tensor:
    """``ref(x)`` computed with another head split, merge or scale: what a known mistake outputs."""
    qkv = ref.qkv(x)
    q, k, v = rearrange(qkv, f"b t {split} -> three b h t d", three=3, h=ref.num_heads)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(scale_dim)).softmax(-1)
    return ref.proj(rearrange(weights @ v, f"b h t d -> b t {merge}"))
