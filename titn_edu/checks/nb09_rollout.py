r"""Part II, notebook 09 (evaluation and attention): attention rollout over the outer blocks.

:func:`attention_rollout` checks a student's rollout, row ``token`` of
:math:`\hat A_L \cdots \hat A_1` with :math:`\hat A_l = \mathrm{rownorm}(\mathrm{mean}_{heads} A_l + I)`
(the residual connection counted as attention to oneself), against
:func:`titn_edu.viz.attention_rollout`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..viz import attention_rollout as reference_rollout
from .guard import forbid
from .harness import CHECKERS, Case, difference, first_hint, generator, keeps_global_rng, passed, randint, require_callable

__all__ = ["attention_rollout"]

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
