r"""Part I, notebook 02 (attention): eq. 1, and eq. 2–3 with several heads (paper §3.1.1).

* :func:`attention` checks a student's scaled dot-product attention, eq. 1
  :math:`\mathrm{softmax}(QK^T/\sqrt{d_k})\,V`, against
  :func:`titn_edu.attention.scaled_dot_product_attention`;
* :func:`multi_head_attention` checks a student's multi-head attention class, eq. 2–3, against
  :class:`titn_edu.MultiHeadAttention` with the same weights;
* :func:`mha_parameters` checks a student's formula for the number of parameters of that layer.

None of them accepts the library's attention (:mod:`titn_edu.attention`) or PyTorch's own
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``) inside the student's code.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .. import attention as attention_module
from ..attention import MultiHeadAttention, scaled_dot_product_attention
from .guard import forbid
from .harness import (CHECKERS, Case, close, describe_shape, difference, first_hint, generator, keeps_global_rng,
                      paired_modules, passed, randint, require_callable, require_class)

__all__ = ["attention", "multi_head_attention", "mha_parameters"]

#: The library's attention and PyTorch's (the fused kernel and nn.MultiheadAttention).
_FORBIDDEN = CHECKERS | forbid(
    attention_module, nn.MultiheadAttention, F.multi_head_attention_forward,
    (F.scaled_dot_product_attention, "torch.nn.functional.scaled_dot_product_attention"))
#: A parameter count is arithmetic: building a module to count it is not allowed.
_NO_MODULES = CHECKERS | forbid((nn.Module.__init__, "torch.nn.Module.__init__ (building a module)"))


# --------------------------------------------------------------------------------- eq. 1
@keeps_global_rng
def attention(student_fn: Callable, *, mask: bool = False, seed: int | None = None) -> None:
    """Check eq. 1 against :func:`titn_edu.attention.scaled_dot_product_attention`.

    ``student_fn(q, k, v)`` (and ``student_fn(q, k, v, mask=mask)`` when ``mask=True``) must return
    ``(output, weights)``: output ``(..., L, d_v)`` and softmax weights ``(..., L, S)``. Cases cover
    batched and multi-head shapes, different query/key lengths and ``d_v != d_k``. ``seed``: other
    shapes, a single query or key, large scores (a hidden test).
    """
    require_callable("attention", student_fn, "a function (q, k, v) -> (output, weights)")
    check, reference = "attention", "titn_edu.attention.scaled_dot_product_attention"
    cases = _attention_cases(mask) if seed is None else _hidden_attention_cases(mask, seed)
    total = len(cases)
    for i, (q, k, v, m) in enumerate(cases):
        desc = f"q {describe_shape(q)}, k {describe_shape(k)}, v {describe_shape(v)}"
        case = Case(check, i, total, desc + (f", mask {describe_shape(m)}" if m is not None else ""), _FORBIDDEN)
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


def _hidden_attention_cases(mask: bool, seed: int) -> list[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """Cases drawn from ``seed``: random leading axes and sizes, one query, one key, large scores; with
    ``mask``, random masks in which every query sees at least one key."""
    g = generator(seed)
    cases = []
    for lead, length, keys, gain in [((randint(g, 1, 3),), randint(g, 2, 9), randint(g, 2, 9), 1.0),
                                     ((randint(g, 1, 2), randint(g, 1, 4)), randint(g, 2, 9), randint(g, 2, 9), 1.0),
                                     ((2,), 1, randint(g, 2, 7), 1.0), ((2,), randint(g, 2, 7), 1, 1.0),
                                     ((randint(g, 1, 3),), randint(g, 2, 6), randint(g, 2, 6), 6.0)]:
        d_k, d_v = randint(g, 1, 24), randint(g, 1, 12)
        q = gain * torch.randn(*lead, length, d_k, generator=g)
        m = None
        if mask:
            m = torch.rand(*lead, length, keys, generator=g) < 0.5
            m[..., randint(g, 0, keys - 1)] = True  # every query sees at least one key
        cases.append((q, torch.randn(*lead, keys, d_k, generator=g), torch.randn(*lead, keys, d_v, generator=g), m))
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
def multi_head_attention(StudentClass: type, *, seed: int | None = None) -> None:
    """Check eq. 2–3 against :class:`titn_edu.MultiHeadAttention`.

    ``StudentClass(dim, num_heads, qkv_bias=...)`` must build a module whose parameters are named and
    shaped like the library's: ``qkv`` = ``nn.Linear(dim, 3 * dim, bias=qkv_bias)`` holding
    :math:`W^Q, W^K, W^V` for all heads (output features ordered ``(three, head, d)``, i.e.
    ``rearrange(qkv(x), "b t (three h d) -> three b h t d")``) and ``proj`` = ``nn.Linear(dim, dim)``
    (:math:`W^O`). The reference weights are copied in; ``module(x)`` with ``x`` of shape
    ``(B, T, dim)`` must return ``(B, T, dim)``. ``seed``: other sizes, a single token (a hidden test).
    """
    check, reference = "multi_head_attention", "titn_edu.MultiHeadAttention"
    require_class(check, StudentClass, reference)
    configs = _mha_configs(seed)
    total = len(configs)
    for i, (dim, heads, batch, tokens, bias) in enumerate(configs):
        case = Case(check, i, total, f"dim={dim}, num_heads={heads}, qkv_bias={bias}, x ({batch}, {tokens}, {dim})",
                    _FORBIDDEN)
        g = generator((10 if seed is None else seed) + i)
        ref, student = paired_modules(case, StudentClass, MultiHeadAttention(dim, heads, qkv_bias=bias), reference,
                                      (dim, heads), {"qkv_bias": bias}, g)
        x = torch.randn(batch, tokens, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = case.call(student, x.clone())
            problem = difference(got, want, "output")
            if problem:
                case.fail(problem, _heads_hint(ref, x, got, want))
    passed(check, total, reference)


def _mha_configs(seed: int | None) -> list[tuple[int, int, int, int, bool]]:
    """``(dim, heads, batch, tokens, qkv_bias)`` of each case: the public ones, or drawn from ``seed``."""
    if seed is None:
        return [(8, 1, 2, 5, False), (12, 3, 2, 7, False), (16, 4, 1, 10, True), (24, 6, 2, 17, False)]
    g = generator(seed)
    configs = []
    for tokens in (randint(g, 2, 12), randint(g, 2, 12), 1, randint(g, 2, 12)):
        heads = randint(g, 1, 6)
        configs.append((heads * randint(g, 1, 6), heads, randint(g, 1, 3), tokens, bool(randint(g, 0, 1))))
    return configs


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


# ----------------------------------------------------------------------------- counting
@keeps_global_rng
def mha_parameters(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check a formula for the number of parameters of :class:`titn_edu.MultiHeadAttention`.

    ``student_fn(dim, qkv_bias=False)`` returns an int; it may not build a module to count it.
    ``seed``: other sizes (a hidden test).
    """
    require_callable("mha_parameters", student_fn, "a function (dim, qkv_bias=False) -> int")
    check, reference = "mha_parameters", "count_parameters(titn_edu.MultiHeadAttention(dim, heads, qkv_bias=...))"
    configs = [(192, False), (12, False), (64, True)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 1, 8), False), (randint(g, 9, 300), True), (randint(g, 9, 300), False), (1, True)]
    total = len(configs)
    for i, (dim, bias) in enumerate(configs):
        case = Case(check, i, total, f"dim={dim}, qkv_bias={bias}", _NO_MODULES)
        want = sum(p.numel() for p in MultiHeadAttention(dim, 1, qkv_bias=bias).parameters())
        got = case.call(student_fn, dim, qkv_bias=bias)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            case.fail(f"expected an int; got {type(got).__name__}.")
        if got != want:
            hint = "qkv is Linear(dim, 3·dim) (a bias only with qkv_bias), proj is Linear(dim, dim) with a bias."
            if got == want - dim:
                hint = "proj has a bias: dim more parameters."
            elif bias and got == want - 3 * dim:
                hint = "with qkv_bias=True, qkv has a bias too: 3·dim more parameters."
            case.fail(f"you counted {got:,}; the layer has {want:,}.", hint)
    passed(check, total, reference)
