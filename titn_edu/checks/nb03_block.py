"""Part I, notebook 03 (MLP, LayerNorm, block): eq. 4–6 and the pre-norm transformer block (paper §3.1.2).

* :func:`layer_norm` checks a student's LayerNorm, eq. 6, against :func:`torch.nn.functional.layer_norm`;
* :func:`mlp` checks a student's MLP class, eq. 4–5, against :class:`titn_edu.Mlp`;
* :func:`transformer_block` checks a student's pre-norm block,
  ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``, against :class:`titn_edu.TransformerBlock`.

Each refuses the library's (or PyTorch's) own version of what it checks inside the student's code:
LayerNorm for :func:`layer_norm`, :class:`titn_edu.Mlp` for :func:`mlp`, :class:`titn_edu.TransformerBlock`
(and ``nn.TransformerEncoderLayer``) for :func:`transformer_block`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import TransformerBlock
from ..layers import Mlp
from .guard import forbid
from .harness import (CHECKERS, Case, difference, first_hint, generator, keeps_global_rng, paired_modules, passed,
                      randint, require_callable, require_class)

__all__ = ["layer_norm", "mlp", "transformer_block"]

_NO_LAYER_NORM = CHECKERS | forbid(F.layer_norm, nn.LayerNorm, nn.GroupNorm, (torch.layer_norm, "torch.layer_norm"),
                                   (torch.native_layer_norm, "torch.native_layer_norm"))
_NO_MLP = CHECKERS | forbid(Mlp)
_NO_BLOCK = CHECKERS | forbid(TransformerBlock, nn.TransformerEncoderLayer)


# --------------------------------------------------------------------------------- eq. 6
@keeps_global_rng
def layer_norm(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check eq. 6 against :func:`torch.nn.functional.layer_norm` (what ``torch.nn.LayerNorm`` computes).

    ``student_fn(x, weight, bias, eps=1e-5)`` normalises ``x`` over its last axis with the biased
    variance, then scales by ``weight`` (γ) and shifts by ``bias`` (β), both of shape ``(x.shape[-1],)``.
    ``seed``: other shapes, a single feature (a hidden test).
    """
    require_callable("layer_norm", student_fn, "a function (x, weight, bias, eps=1e-5) -> Tensor")
    check, reference = "layer_norm", "torch.nn.functional.layer_norm"
    configs = _layer_norm_configs(seed)
    total = len(configs)
    for i, (shape, eps) in enumerate(configs):
        g = generator((20 if seed is None else seed) + i)
        x = 3.0 + 2.0 * torch.randn(shape, generator=g)
        dim = shape[-1]
        weight = 1.0 + 0.3 * torch.randn(dim, generator=g)
        bias = 0.3 * torch.randn(dim, generator=g)
        eps_used = 1e-5 if eps is None else eps
        case = Case(check, i, total, f"x {tuple(shape)}" + (f", eps={eps}" if eps is not None else ""), _NO_LAYER_NORM)
        want = F.layer_norm(x, (dim,), weight, bias, eps_used)
        kwargs = {} if eps is None else {"eps": eps}
        inputs = dict(x=x.clone(), weight=weight.clone(), bias=bias.clone())
        with torch.no_grad():
            got = case.call(student_fn, inputs["x"], inputs["weight"], inputs["bias"], **kwargs)
        case.unchanged(inputs, dict(x=x, weight=weight, bias=bias))
        problem = difference(got, want, "output")
        if problem:
            case.fail(problem, _layer_norm_hint(got, x, weight, bias, eps_used))
    passed(check, total, reference)


def _layer_norm_configs(seed: int | None) -> list[tuple[tuple[int, ...], float | None]]:
    """``(shape of x, eps or None for the default)`` of each case: the public ones, or drawn from ``seed``."""
    if seed is None:
        return [((2, 5, 8), None), ((3, 16), None), ((1, 4, 7, 12), 0.1), ((2, 3), 1e-3)]
    g = generator(seed)
    return [((randint(g, 1, 3), randint(g, 1, 6), randint(g, 2, 40)), None), ((randint(g, 1, 5), 1), None),
            ((2, randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 9)), 0.5), ((randint(g, 1, 4), randint(g, 2, 16)), None)]


def _layer_norm_hint(got: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> str | None:
    """Which known mistake (unbiased variance, eps outside the root, no affine part …) produced ``got``."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    mistakes = [
        ((x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps) * weight + bias,
         "use the biased variance (x.var(-1, unbiased=False), the mean of squared deviations), as LayerNorm does."),
        ((x - mean) / (var.sqrt() + eps) * weight + bias, "add eps inside the square root: sqrt(var + eps)."),
        ((x - mean) / torch.sqrt(var + eps), "you forgot the affine part: multiply by weight (γ) and add bias (β)."),
        ((x - mean) / torch.sqrt(var + eps) * weight, "you forgot to add bias (β)."),
        (x / torch.sqrt(var + eps) * weight + bias, "subtract the mean before dividing."),
        ((x - mean) / torch.sqrt(var + 1e-5) * weight + bias, "use the eps you are given, not a fixed value."),
    ]
    if x.dim() >= 2:
        m0, v0 = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
        mistakes.append(((x - m0) / torch.sqrt(v0 + eps) * weight + bias,
                         "normalise each token over its features, the last axis (dim=-1), not over the batch."))
    return first_hint(got, mistakes)


# ------------------------------------------------------------------------------ eq. 4–5
@keeps_global_rng
def mlp(StudentClass: type, *, seed: int | None = None) -> None:
    """Check eq. 4–5 against :class:`titn_edu.Mlp`.

    ``StudentClass(dim, hidden_dim)`` must have ``fc1 = nn.Linear(dim, hidden_dim)`` and
    ``fc2 = nn.Linear(hidden_dim, dim)`` (an activation module without parameters may sit between
    them); ``module(x)`` computes ``fc2(GELU(fc1(x)))`` with the exact (erf) GELU. ``seed``: other
    sizes, inputs with one to three leading axes (a hidden test).
    """
    check, reference = "mlp", "titn_edu.Mlp"
    require_class(check, StudentClass, reference)
    configs = [(8, 32, (2, 5)), (12, 24, (3, 4)), (6, 48, (1, 9))]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 1, 16), randint(g, 1, 40), (randint(g, 1, 6),)),
                   (randint(g, 1, 16), randint(g, 1, 40), (randint(g, 1, 3), randint(g, 1, 5))),
                   (randint(g, 1, 16), randint(g, 1, 40), (2, randint(g, 1, 3), randint(g, 1, 4)))]
    total = len(configs)
    for i, (dim, hidden, lead) in enumerate(configs):
        case = Case(check, i, total, f"dim={dim}, hidden_dim={hidden}, x {lead + (dim,)}", _NO_MLP)
        g = generator((30 if seed is None else seed) + i)
        ref, student = paired_modules(case, StudentClass, Mlp(dim, hidden), reference, (dim, hidden), {}, g)
        x = 2.0 * torch.randn(*lead, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = case.call(student, x.clone())
            problem = difference(got, want, "output")
            if problem:
                h = ref.fc1(x)
                case.fail(problem, first_hint(got, [
                    (ref.fc2(F.relu(h)), "that is ReLU; eq. 4 uses σ = GELU (nn.GELU())."),
                    (ref.fc2(F.gelu(h, approximate="tanh")), "use the exact GELU, x·Φ(x) with erf (nn.GELU()), not the tanh approximation."),
                    (ref.fc2(h), "the activation σ between the two linear layers is missing."),
                    (F.gelu(ref.fc2(h)), "apply GELU between fc1 and fc2, not after fc2."),
                ]))
    passed(check, total, reference)


# ----------------------------------------------------------------------- pre-norm block
@keeps_global_rng
def transformer_block(StudentClass: type, *, seed: int | None = None) -> None:
    """Check the pre-norm block against :class:`titn_edu.TransformerBlock`.

    ``StudentClass(dim=, num_heads=, mlp_ratio=)`` (keyword arguments) must have ``norm1``, ``attn``
    (parameters ``qkv``, ``proj`` like :class:`titn_edu.MultiHeadAttention`), ``norm2`` and ``mlp``
    (``fc1``, ``fc2`` like :class:`titn_edu.Mlp` with ``hidden_dim = int(dim * mlp_ratio)``), and
    compute ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``. ``seed``: other sizes and MLP
    ratios, a single token (a hidden test).
    """
    check, reference = "transformer_block", "titn_edu.TransformerBlock"
    require_class(check, StudentClass, reference)
    configs = [(8, 2, 2.0, (2, 5)), (12, 3, 4.0, (1, 7)), (16, 4, 1.0, (2, 3))]
    if seed is not None:
        g = generator(seed)
        configs = [(2 * h, h, r, (randint(g, 1, 3), t)) for h, r, t in
                   [(randint(g, 1, 4), 3.0, randint(g, 2, 9)), (randint(g, 1, 4), 0.5, 1), (randint(g, 1, 4), 2.0, randint(g, 2, 9))]]
    total = len(configs)
    for i, (dim, heads, ratio, (batch, tokens)) in enumerate(configs):
        case = Case(check, i, total, f"dim={dim}, num_heads={heads}, mlp_ratio={ratio}, x ({batch}, {tokens}, {dim})",
                    _NO_BLOCK)
        g = generator((40 if seed is None else seed) + i)
        kwargs = dict(dim=dim, num_heads=heads, mlp_ratio=ratio)
        ref, student = paired_modules(case, StudentClass, TransformerBlock(**kwargs), reference, (), kwargs, g)
        x = torch.randn(batch, tokens, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = case.call(student, x.clone())
            problem = difference(got, want, "output")
            if problem:
                case.fail(problem, _block_hint(ref, x, got))
    passed(check, total, reference)


def _block_hint(ref: TransformerBlock, x: Tensor, got: Any) -> str | None:
    """Which known mistake (a missing residual, post-norm, norm1 twice …) produced ``got``."""
    y = ref.attn(ref.norm1(x))
    a = x + y
    post = ref.norm1(x + ref.attn(x))
    return first_hint(got, [
        (ref.mlp(ref.norm2(y)), "both residual connections are missing: x = x + attn(norm1(x)), then x = x + mlp(norm2(x))."),
        (y + ref.mlp(ref.norm2(y)), "the residual around the attention is missing: x = x + attn(norm1(x))."),
        (ref.mlp(ref.norm2(a)), "the residual around the MLP is missing: x = x + mlp(norm2(x))."),
        (a + ref.mlp(ref.norm2(x)), "the MLP branch must read the updated x (after the attention residual)."),
        (ref.norm2(post + ref.mlp(post)),
         "this is a post-norm block; TITN is pre-norm: normalise the input of each branch, x + f(LN(x))."),
        (a + ref.mlp(ref.norm1(a)), "use norm2 (not norm1 again) before the MLP."),
    ])
