r"""Part II, notebook 09 (evaluation and attention): attention rollout, and how much two maps agree.

:func:`attention_rollout` checks a student's rollout, row ``token`` of
:math:`\hat A_L \cdots \hat A_1` with :math:`\hat A_l = \mathrm{rownorm}(\mathrm{mean}_{heads} A_l + I)`
(the residual connection counted as attention to oneself), against
:func:`titn_edu.viz.attention_rollout`. :func:`top_overlap` checks the share of the k most attended
patches two maps have in common (a similarity for the randomisation test).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..viz import attention_rollout as reference_rollout
from .guard import forbid
from .harness import (CHECKERS, Case, describe_shape, difference, first_hint, generator, keeps_global_rng, passed,
                      randint, require_callable)

__all__ = ["attention_rollout", "top_overlap"]

_NO_ROLLOUT = CHECKERS | forbid((reference_rollout, "titn_edu.viz.attention_rollout"))


@keeps_global_rng
def attention_rollout(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check attention rollout against :func:`titn_edu.viz.attention_rollout`.

    ``student_fn(maps, token)`` takes the outer maps of one forward pass, a list of ``(B, heads, T, T)``
    tensors (first layer first), and a token index (``0`` class, ``-1`` distillation) and returns
    ``(B, N)``: row ``token`` of :math:`\hat A_L \cdots \hat A_1`, with
    :math:`\hat A_l = \mathrm{rownorm}(\mathrm{mean}_{heads} A_l + I)`, without the class (first) and
    distillation (last) tokens. It may not call :func:`titn_edu.viz.attention_rollout`. ``seed``: other
    sizes and depths (a hidden test).
    """
    require_callable("attention_rollout", student_fn, "a function (maps, token) -> (B, N)")
    check, reference = "attention_rollout", "titn_edu.viz.attention_rollout"
    configs = [(2, 3, 18, 4, 0), (1, 2, 6, 3, -1), (3, 4, 11, 1, 0), (2, 2, 18, 12, -1)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 1, 3), randint(g, 1, 4), randint(g, 3, 20), randint(g, 1, 6), token) for token in (0, -1, 0)]
    total = len(configs)
    for i, (batch, heads, t, layers, token) in enumerate(configs):
        case = Case(check, i, total, f"{layers} layer(s) of ({batch}, {heads}, {t}, {t}), token {token}", _NO_ROLLOUT)
        g = generator((300 if seed is None else seed) + i)
        maps = [(2 * torch.randn(batch, heads, t, t, generator=g)).softmax(-1) for _ in range(layers)]
        want = reference_rollout(maps, token=token)
        copies = [m.clone() for m in maps]
        got = case.call(student_fn, copies, token)
        if any(not torch.equal(m, c) for m, c in zip(maps, copies)):
            case.fail("your implementation changed the attention maps in place.",
                      "use out-of-place operations (a = a + eye, not a += eye).")
        problem = difference(got, want, "the rollout", atol=1e-5, rtol=1e-4)
        if problem:
            case.fail(problem, _rollout_hint(got, maps, token))
    passed(check, total, reference)


def _rollout_hint(got: Any, maps: list[Tensor], token: int) -> str | None:
    """Which known mistake (no identity, no renormalising, max over heads, wrong tokens or order) produced ``got``."""
    mistakes = [
        (_rollout(maps, token, identity=False), "add the identity (the residual connection) to every layer's map: A + I."),
        (_rollout(maps, token, norm=False), "renormalise each row after adding the identity: (A + I) / (A + I).sum(-1)."),
        (_rollout(maps, token, fuse="amax"), "average the heads (mean over dim 1), not their maximum."),
        (_rollout(maps, token, keep=(1, None)), "drop both extra tokens: the class token is first, the distillation token last."),
        (_rollout(maps, token, keep=(2, None)), "TITN's order is [class, patches, distillation]: drop the first and the last token."),
    ]
    if len(maps) > 1:
        mistakes.append((_rollout(maps, token, reverse=True),
                         "multiply in layer order: R = Â_L ··· Â_1 (each new layer on the left)."))
    return first_hint(got, mistakes, atol=1e-5)


def _rollout(maps: list[Tensor], token: int, *, norm: bool = True, identity: bool = True, reverse: bool = False,
             fuse: str = "mean", keep: tuple[int, int | None] = (1, -1)) -> Tensor:
    """The rollout with one step changed (each keyword names one), for recognising a known mistake.

    ``keep``: the slice of tokens returned, ``(1, -1)`` drops the class (first) and distillation (last) token.
    """
    batch, t = maps[0].shape[0], maps[0].shape[-1]
    eye = torch.eye(t)
    r = eye.expand(batch, t, t)
    for a in (maps[::-1] if reverse else maps):
        a = getattr(a, fuse)(1)
        a = a + eye if identity else a
        a = a / a.sum(-1, keepdim=True) if norm else a
        r = a @ r
    lo, hi = keep
    return r[:, token, lo:hi]


def _overlap(a: Tensor, b: Tensor, k: int, largest: bool = True) -> Tensor:
    top_a = a.topk(k, dim=-1, largest=largest).indices
    top_b = b.topk(k, dim=-1, largest=largest).indices
    return (top_a[:, :, None] == top_b[:, None, :]).any(-1).sum(-1).double() / k


@keeps_global_rng
def top_overlap(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check the share of the ``k`` most attended patches that two maps have in common.

    ``student_fn(a, b, k)`` takes two ``(B, N)`` maps (one row per image, no ties within a row) and an
    ``int`` k ≤ N and returns a ``(B,)`` tensor: for each row, how many of the k largest entries of ``a``
    are also among the k largest of ``b``, divided by k (1: the same top k; 0: none in common).
    ``seed``: other sizes and k, including k = N (a hidden test).
    """
    require_callable("top_overlap", student_fn, "a function (a, b, k) -> (B,) shares")
    check, reference = "top_overlap", "the definition"
    configs = [(6, 16, 4), (2, 16, 1), (3, 64, 8)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 1, 6), n, randint(g, 1, n)) for n in (randint(g, 4, 64), randint(g, 4, 64))]
        configs.append((2, 9, 9))
    total = len(configs)
    for i, (batch, n, k) in enumerate(configs):
        case = Case(check, i, total, f"{batch} rows of {n} patches, k = {k}")
        g = generator((900 if seed is None else seed) + i)
        a = torch.rand(batch, n, generator=g)
        b = torch.where(torch.rand(batch, n, generator=g) < 0.5, a + 0.1 * torch.rand(batch, n, generator=g),
                        torch.rand(batch, n, generator=g))          # partly the same ranking, partly not
        originals = {"a": a.clone(), "b": b.clone()}
        got = case.call(student_fn, a, b, k)
        case.unchanged({"a": a, "b": b}, originals)
        want = _overlap(a, b, k)
        value = got.double() if isinstance(got, Tensor) else got
        problem = difference(value, want, "the overlap", atol=1e-6)
        if problem:
            hint = first_hint(value, [
                (want * k, "divide the number of patches in common by k: a share between 0 and 1."),
                (_overlap(a, b, k, largest=False), "take the k *largest* weights of each row, not the smallest."),
            ])
            if hint is None and isinstance(got, Tensor) and got.shape != want.shape:
                hint = f"return one share per row: shape ({batch},); got {describe_shape(got)}."
            case.fail(problem, hint)
    passed(check, total, reference)
