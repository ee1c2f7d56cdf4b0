"""Part I, notebook 05 (tokens and the model): the outer token sequence the first block reads (paper §3.3).

:func:`embed_tokens` checks a student's ``[class, patch_1 … patch_N, distillation] + pos_embed``
against :meth:`titn_edu.TITN.embed`. (Notebook 05 also counts a whole model's parameters with
:func:`titn_edu.checks.block_parameters`, from notebook 04.)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .harness import Case, difference, first_hint, generator, keeps_global_rng, passed, require_callable

__all__ = ["embed_tokens"]


@keeps_global_rng
def embed_tokens(student_fn: Callable) -> None:
    """Check the outer token sequence against :meth:`titn_edu.TITN.embed`.

    ``student_fn(patches, cls_token, dist_token, pos_embed)`` with patches ``(B, N, D)``, tokens
    ``(1, 1, D)`` (``dist_token`` may be ``None``: ViT/TNT) and ``pos_embed`` ``(1, T, D)`` returns
    ``[class, patch_1 … patch_N, distillation] + pos_embed``, shape ``(B, T, D)``.
    """
    require_callable("embed_tokens", student_fn, "a function (patches, cls_token, dist_token, pos_embed) -> Tensor")
    check, reference = "embed_tokens", "TITN.embed (class first, distillation last, plus positions)"
    configs = [(2, 4, 8, True), (1, 16, 12, True), (3, 9, 6, False)]
    total = len(configs)
    for i, (batch, n, dim, distill) in enumerate(configs):
        g = generator(80 + i)
        patches = torch.randn(batch, n, dim, generator=g)
        cls = torch.randn(1, 1, dim, generator=g)
        dist = torch.randn(1, 1, dim, generator=g) if distill else None
        pos = torch.randn(1, n + 1 + int(distill), dim, generator=g)
        case = Case(check, i, total, f"patches ({batch}, {n}, {dim}), dist_token {'(1, 1, %d)' % dim if distill else 'None'}")
        want = _reference_tokens(patches, cls, dist, pos)
        inputs = dict(patches=patches.clone(), cls_token=cls.clone(), pos_embed=pos.clone())
        got = case.call(student_fn, inputs["patches"], inputs["cls_token"],
                        dist.clone() if distill else None, inputs["pos_embed"])
        case.unchanged(inputs, dict(patches=patches, cls_token=cls, pos_embed=pos))
        problem = difference(got, want, "tokens")
        if problem:
            case.fail(problem, _tokens_hint(got, patches, cls, dist, pos))
    passed(check, total, reference)


def _reference_tokens(patches: Tensor, cls: Tensor, dist: Tensor | None, pos: Tensor) -> Tensor:
    """What :meth:`titn_edu.TITN.embed` builds from the patch tokens: class first, distillation last."""
    batch = patches.shape[0]
    parts = [cls.expand(batch, -1, -1), patches] + ([dist.expand(batch, -1, -1)] if dist is not None else [])
    return torch.cat(parts, dim=1) + pos


def _tokens_hint(got: Any, patches: Tensor, cls: Tensor, dist: Tensor | None, pos: Tensor) -> str | None:
    """Which known mistake (no positions, tokens in the wrong order, not expanded to the batch) produced ``got``."""
    batch = patches.shape[0]
    parts = [cls.expand(batch, -1, -1), patches] + ([dist.expand(batch, -1, -1)] if dist is not None else [])
    mistakes = [(torch.cat(parts, dim=1), "add the position embeddings to every token (after concatenating).")]
    if dist is not None:
        mistakes.append((torch.cat([dist.expand(batch, -1, -1), cls.expand(batch, -1, -1), patches], 1) + pos,
                         "the distillation token goes last: [class, patches, distillation]."))
        mistakes.append((torch.cat([cls.expand(batch, -1, -1), dist.expand(batch, -1, -1), patches], 1) + pos,
                         "the distillation token goes last: [class, patches, distillation]."))
    mistakes.append((torch.cat(parts[::-1], dim=1) + pos, "the class token goes first."))
    hint = first_hint(got, mistakes)
    if hint is None and isinstance(got, Tensor) and got.dim() == 3 and got.shape[0] == 1 and batch > 1:
        hint = "expand the tokens to the batch: cls_token.expand(B, -1, -1)."
    return hint
