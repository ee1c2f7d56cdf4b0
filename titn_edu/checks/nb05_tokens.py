"""Part I, notebook 05 (tokens and the model): the outer token sequence the first block reads (paper §3.3).

* :func:`embed_tokens` checks a student's ``[class, patch_1 … patch_N, distillation] + pos_embed``
  against :meth:`titn_edu.TITN.embed` (and refuses the model's own code inside the student's);
* :func:`model_parameters` checks a student's parameter count of a whole TNT/TITN model (built on the
  block formula of notebook 04, :func:`titn_edu.checks.block_parameters`) against ``build_model``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..model import MODEL_PRESETS, TITN, build_model
from .guard import forbid
from .harness import CHECKERS, Case, difference, first_hint, generator, keeps_global_rng, passed, randint, require_callable

__all__ = ["embed_tokens", "model_parameters"]

_NO_MODEL = CHECKERS | forbid(TITN)
_NO_MODULES = CHECKERS | forbid((nn.Module.__init__, "torch.nn.Module.__init__ (building a module)"))


@keeps_global_rng
def embed_tokens(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check the outer token sequence against :meth:`titn_edu.TITN.embed`.

    ``student_fn(patches, cls_token, dist_token, pos_embed)`` with patches ``(B, N, D)``, tokens
    ``(1, 1, D)`` (``dist_token`` may be ``None``: ViT/TNT) and ``pos_embed`` ``(1, T, D)`` returns
    ``[class, patch_1 … patch_N, distillation] + pos_embed``, shape ``(B, T, D)``. ``seed``: other
    sizes, a single patch (a hidden test).
    """
    require_callable("embed_tokens", student_fn, "a function (patches, cls_token, dist_token, pos_embed) -> Tensor")
    check, reference = "embed_tokens", "TITN.embed (class first, distillation last, plus positions)"
    configs = [(2, 4, 8, True), (1, 16, 12, True), (3, 9, 6, False)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 2, 5), randint(g, 2, 20), randint(g, 1, 16), True), (randint(g, 1, 3), 1, randint(g, 1, 8), True),
                   (randint(g, 2, 5), randint(g, 2, 20), randint(g, 1, 16), False)]
    total = len(configs)
    for i, (batch, n, dim, distill) in enumerate(configs):
        g = generator((80 if seed is None else seed) + i)
        patches = torch.randn(batch, n, dim, generator=g)
        cls = torch.randn(1, 1, dim, generator=g)
        dist = torch.randn(1, 1, dim, generator=g) if distill else None
        pos = torch.randn(1, n + 1 + int(distill), dim, generator=g)
        case = Case(check, i, total, f"patches ({batch}, {n}, {dim}), dist_token {'(1, 1, %d)' % dim if distill else 'None'}",
                    _NO_MODEL)
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


# ------------------------------------------------------------------------ counting a model
@keeps_global_rng
def model_parameters(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check a formula for the parameters of a whole TNT/TITN model against ``build_model``.

    ``student_fn(num_classes=, img_size=, in_chans=, **preset)`` gets a preset of
    ``titn_edu.MODEL_PRESETS`` with an inner stream (``patch_size``, ``pixel_size``, ``outer_dim``,
    ``inner_dim``, ``depth``, ``mlp_ratio``, ``distill`` and the keys it may ignore) and returns an int,
    without building a module. ``seed``: the tiny presets with other classes, channels and image sizes.
    """
    require_callable("model_parameters", student_fn, "a function (*, num_classes, img_size, in_chans, **preset) -> int")
    check, reference = "model_parameters", "count_parameters(titn_edu.build_model(...))"
    configs = [(name, 100, 32, 3) for name in ("tnt", "titn", "titn-large-patch")]
    if seed is not None:
        g = generator(seed)
        configs = [(name, randint(g, 2, 50), 16 * randint(g, 1, 3), randint(g, 1, 3))
                   for name in ("tnt-tiny", "titn-tiny", "titn-tiny-large-patch")]
    total = len(configs)
    for i, (name, classes, size, chans) in enumerate(configs):
        case = Case(check, i, total, f"{name}, num_classes={classes}, img_size={size}, in_chans={chans}", _NO_MODULES)
        model = build_model(name, num_classes=classes, img_size=size, in_chans=chans)
        want = sum(p.numel() for p in model.parameters())
        got = case.call(student_fn, num_classes=classes, img_size=size, in_chans=chans, **MODEL_PRESETS[name])
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            case.fail(f"expected an int; got {type(got).__name__}.")
        if got != want:
            parts = {part: sum(p.numel() for p in getattr(model, part).parameters())
                     for part in ("pixel_embed", "patch_embed", "blocks", "norm", "head", "head_dist")
                     if getattr(model, part, None) is not None}
            tokens = want - sum(parts.values())
            detail = ", ".join(f"{k} {v:,}" for k, v in parts.items()) + f", tokens and positions {tokens:,}"
            case.fail(f"you counted {got:,}; the model has {want:,} ({detail}).",
                      "count the pixel embedding with its pixel positions, the first patch projection, the class "
                      "(and distillation) token, the positions of all N + 1 (+ 1) tokens, the blocks, the final "
                      "LayerNorm and the head(s).")
    passed(check, total, reference)
