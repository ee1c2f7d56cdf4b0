"""Part I, notebook 04 (inner and outer transformer): one TITN block, Fig. 1 of the paper (§3.2).

* :func:`inner_outer_block` checks a student's block (inner transformer over the pixels, patch
  residual with zero rows for the class and distillation tokens, outer transformer over the
  tokens) against :class:`titn_edu.TITNBlock` with the same weights;
* :func:`block_parameters` checks a student's formula for the number of parameters of one block;
* :func:`inner_flops` checks a student's count of the inner transformer's matrix-product FLOPs
  against ``torch.utils.flop_counter.FlopCounterMode``.

:func:`inner_outer_block` refuses :class:`titn_edu.TITNBlock` (and the model that holds it) inside the
student's code; the counting checkers refuse any module built to be counted.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..blocks import TITNBlock, TransformerBlock
from ..model import TITN, set_fast_path
from .guard import forbid
from .harness import (CHECKERS, Case, difference, first_hint, generator, keeps_global_rng, paired_modules, passed,
                      randint, require_callable, require_class)

__all__ = ["inner_outer_block", "block_parameters", "inner_flops"]

_NO_TITN_BLOCK = CHECKERS | forbid(TITNBlock, TITN)
#: A count is arithmetic on the sizes: building a module (or running one under a FLOP counter) is not allowed.
_NO_MODULES = CHECKERS | forbid((nn.Module.__init__, "torch.nn.Module.__init__ (building a module)"), FlopCounterMode)


# ---------------------------------------------------------------------------- one block
#: Constructor arguments of each case, plus the batch size and the number of patches of its input.
_BLOCK_CASES = [
    dict(outer_dim=16, inner_dim=4, num_pixels=4, outer_heads=2, inner_heads=1, mlp_ratio=2.0, num_prefix=1, num_suffix=1, batch=2, patches=4),
    dict(outer_dim=24, inner_dim=6, num_pixels=16, outer_heads=3, inner_heads=2, mlp_ratio=4.0, num_prefix=1, num_suffix=0, batch=1, patches=9),
    dict(outer_dim=12, inner_dim=8, num_pixels=4, outer_heads=2, inner_heads=2, mlp_ratio=1.0, num_prefix=2, num_suffix=1, batch=3, patches=4),
]


@keeps_global_rng
def inner_outer_block(StudentBlock: type, *, seed: int | None = None) -> None:
    """Check one TITN block (Fig. 1) against :class:`titn_edu.TITNBlock`.

    ``StudentBlock(outer_dim=, inner_dim=, num_pixels=, outer_heads=, inner_heads=, mlp_ratio=,
    num_prefix=, num_suffix=)`` (keyword arguments) must have the library's parameter names:
    ``inner`` (a :class:`titn_edu.TransformerBlock` over ``inner_dim``), ``patch_residual``
    (``norm`` = LayerNorm(P·c), ``proj`` = Linear(P·c, D)) and ``outer`` (a TransformerBlock over
    ``outer_dim``). ``block(pixels, tokens)`` takes pixels ``(B·N, P, c)`` and tokens
    ``(B, num_prefix + N + num_suffix, D)`` and returns the new ``(pixels, tokens)``. ``seed``: other
    sizes and numbers of extra tokens (none, or two at either end) (a hidden test).
    """
    check, reference = "inner_outer_block", "titn_edu.TITNBlock"
    require_class(check, StudentBlock, reference)
    configs = _BLOCK_CASES if seed is None else _hidden_block_cases(seed)
    total = len(configs)
    for i, cfg in enumerate(configs):
        cfg = dict(cfg)
        batch, patches = cfg.pop("batch"), cfg.pop("patches")
        tokens_len = cfg["num_prefix"] + patches + cfg["num_suffix"]
        case = Case(check, i, total, (
            f"pixels ({batch * patches}, {cfg['num_pixels']}, {cfg['inner_dim']}), tokens ({batch}, {tokens_len}, "
            f"{cfg['outer_dim']}), num_prefix={cfg['num_prefix']}, num_suffix={cfg['num_suffix']}"), _NO_TITN_BLOCK)
        g = generator((70 if seed is None else seed) + i)
        ref, student = paired_modules(case, StudentBlock, TITNBlock(**cfg), reference, (), cfg, g)
        pixels = torch.randn(batch * patches, cfg["num_pixels"], cfg["inner_dim"], generator=g)
        tokens = torch.randn(batch, tokens_len, cfg["outer_dim"], generator=g)
        with torch.no_grad():
            _compare_block(case, ref, student, pixels, tokens, (cfg["num_prefix"], cfg["num_suffix"]))
    passed(check, total, reference)


def _hidden_block_cases(seed: int) -> list[dict[str, Any]]:
    """Block settings drawn from ``seed`` (as in ``_BLOCK_CASES``): no extra token, two at the back, two in front."""
    g = generator(seed)
    cases = []
    for prefix, suffix in [(0, 0), (1, 2), (2, 0)]:
        outer_heads, inner_heads = randint(g, 1, 3), randint(g, 1, 2)
        cases.append(dict(outer_dim=outer_heads * randint(g, 2, 6), inner_dim=inner_heads * randint(g, 1, 4),
                          num_pixels=randint(g, 1, 9), outer_heads=outer_heads, inner_heads=inner_heads,
                          mlp_ratio=float(randint(g, 1, 4)), num_prefix=prefix, num_suffix=suffix,
                          batch=randint(g, 1, 3), patches=randint(g, 1, 6)))
    return cases


def _compare_block(case: Case, ref: TITNBlock, student: Any, pixels: Tensor, tokens: Tensor,
                   zero_rows: tuple[int, int]) -> None:
    """One case: both streams of ``student(pixels, tokens)`` against ``ref``'s, pixels first.

    ``zero_rows``: ``(num_prefix, num_suffix)``, the tokens before and after the patch tokens.
    """
    want_pixels, want_tokens = ref(pixels, tokens)
    inputs = dict(pixels=pixels.clone(), tokens=tokens.clone())
    result = case.call(student, inputs["pixels"], inputs["tokens"],
                       hint="this case has num_prefix={} and num_suffix={}: pad the residual with "
                            "self.num_prefix / self.num_suffix zero rows, not fixed numbers.".format(*zero_rows))
    case.unchanged(inputs, dict(pixels=pixels, tokens=tokens))
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        case.fail(f"expected a pair (pixels, tokens); got {type(result).__name__}.",
                  "return both streams: `return pixels, tokens`.")
    got_pixels, got_tokens = result
    problem = difference(got_pixels, want_pixels, "pixels")
    if problem:
        case.fail(problem, "the inner stream is just the inner transformer: pixels = self.inner(pixels).")
    problem = difference(got_tokens, want_tokens, "tokens")
    if problem:
        case.fail(problem, _tokens_hint(ref, pixels, tokens, want_pixels, got_tokens, zero_rows))


def _tokens_hint(ref: TITNBlock, pixels: Tensor, tokens: Tensor, inner_pixels: Tensor, got: Any,
                 zero_rows: tuple[int, int]) -> str | None:
    """Which known mistake in the patch residual (missing, zero rows misplaced, no norm …) produced ``got``."""
    pre, suf = zero_rows
    batch = tokens.shape[0]
    patch_residual = ref.patch_residual  # norm, then proj

    def flat(p: Tensor) -> Tensor:
        return rearrange(p, "(b n) p c -> b n (p c)", b=batch)

    residual = patch_residual.proj(patch_residual.norm(flat(inner_pixels)))
    misplaced = ("the zero rows go in front for the class token(s) and at the back for the distillation token: "
                 "F.pad(residual, (0, 0, num_prefix, num_suffix)).")
    return first_hint(got, [
        (ref.outer(tokens), "the patch residual is missing: add the projected pixels to the patch tokens before the outer transformer."),
        (ref.outer(tokens + F.pad(residual, (0, 0, pre + suf, 0))), misplaced),
        (ref.outer(tokens + F.pad(residual, (0, 0, 0, pre + suf))), misplaced),
        (ref.outer(tokens + F.pad(patch_residual.proj(flat(inner_pixels)), (0, 0, pre, suf))),
         "the patch residual normalises the flattened pixels before projecting them: proj(norm(flat))."),
        (ref.outer(tokens) + F.pad(residual, (0, 0, pre, suf)),
         "add the patch residual before the outer transformer, not after it."),
        (ref.outer(tokens + F.pad(patch_residual.proj(patch_residual.norm(flat(pixels))), (0, 0, pre, suf))),
         "build the patch residual from the pixels after the inner transformer, not from its input."),
    ])


# ------------------------------------------------------------------------ counting
@keeps_global_rng
def block_parameters(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check a parameter-count formula for one TITN block against ``count_parameters(TITNBlock(...))``.

    ``student_fn(outer_dim=, inner_dim=, num_pixels=, mlp_ratio=)`` (keyword arguments) returns the
    number of parameters (an int), without building a module. The heads do not change the count.
    ``seed``: other sizes, one pixel per patch (a hidden test).
    """
    require_callable("block_parameters", student_fn, "a function (*, outer_dim, inner_dim, num_pixels, mlp_ratio) -> int")
    check, reference = "block_parameters", "count_parameters(titn_edu.TITNBlock(...))"
    configs = [dict(outer_dim=192, inner_dim=12, num_pixels=16, mlp_ratio=4),
               dict(outer_dim=64, inner_dim=8, num_pixels=16, mlp_ratio=2),
               dict(outer_dim=192, inner_dim=12, num_pixels=16, mlp_ratio=1),
               dict(outer_dim=96, inner_dim=24, num_pixels=4, mlp_ratio=3)]
    if seed is not None:
        g = generator(seed)
        configs = [dict(outer_dim=randint(g, 8, 256), inner_dim=randint(g, 1, 32), num_pixels=randint(g, 2, 64),
                        mlp_ratio=randint(g, 1, 4)) for _ in range(3)]
        configs.append(dict(outer_dim=randint(g, 8, 64), inner_dim=randint(g, 1, 8), num_pixels=1, mlp_ratio=2))
    total = len(configs)
    for i, cfg in enumerate(configs):
        case = Case(check, i, total, ", ".join(f"{k}={v}" for k, v in cfg.items()), _NO_MODULES)
        block = TITNBlock(outer_heads=1, inner_heads=1, **cfg)
        want = sum(p.numel() for p in block.parameters())
        got = case.call(student_fn, **cfg)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            case.fail(f"expected an int; got {type(got).__name__}.")
        if got != want:
            parts = {name: sum(p.numel() for p in getattr(block, name).parameters())
                     for name in ("inner", "patch_residual", "outer")}
            detail = ", ".join(f"{k} {v:,}" for k, v in parts.items())
            case.fail(f"you counted {got:,}; the block has {want:,} ({detail}).",
                      "a Linear(a, b) has a·b + b parameters, a LayerNorm(d) has 2·d; the attention has qkv (no bias) and proj.")
    passed(check, total, reference)


@keeps_global_rng
def inner_flops(student_fn: Callable, *, seed: int | None = None) -> None:
    """Check a count of the inner transformer's matrix-product FLOPs for one image against ``FlopCounterMode``.

    ``student_fn(num_patches=, num_pixels=, inner_dim=, mlp_ratio=)`` (keyword arguments) returns the
    FLOPs (2 per multiply-add) of one :class:`titn_edu.TransformerBlock` of size ``inner_dim`` run on
    ``(num_patches, num_pixels, inner_dim)`` pixel tokens with eq. 1 written out: ``qkv`` and ``proj``,
    :math:`QK^T` and weights × V, and the MLP's two layers. ``seed``: other sizes (a hidden test).
    """
    require_callable("inner_flops", student_fn, "a function (*, num_patches, num_pixels, inner_dim, mlp_ratio) -> int")
    check, reference = "inner_flops", "FlopCounterMode on titn_edu.TransformerBlock (eq. 1 written out)"
    configs = [dict(num_patches=16, num_pixels=16, inner_dim=12, mlp_ratio=4.0),
               dict(num_patches=4, num_pixels=16, inner_dim=12, mlp_ratio=4.0),
               dict(num_patches=64, num_pixels=4, inner_dim=8, mlp_ratio=2.0)]
    if seed is not None:
        g = generator(seed)
        configs = [dict(num_patches=randint(g, 1, 64), num_pixels=randint(g, 1, 36), inner_dim=2 * randint(g, 1, 12),
                        mlp_ratio=float(randint(g, 1, 4))) for _ in range(3)]
    total = len(configs)
    for i, cfg in enumerate(configs):
        case = Case(check, i, total, ", ".join(f"{k}={v}" for k, v in cfg.items()), _NO_MODULES)
        want = _counted_flops(**cfg)
        got = case.call(student_fn, **cfg)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            case.fail(f"expected an int; got {type(got).__name__}.")
        if got != want:
            hint = "count 2 FLOPs per multiply-add, for every one of the num_patches patches."
            if got * 2 == want:
                hint = "a multiply-add is 2 FLOPs."
            elif got * cfg["num_patches"] == want:
                hint = "the inner transformer runs on every patch: multiply by num_patches."
            case.fail(f"you counted {got:,}; FlopCounterMode counts {want:,}.", hint)
    passed(check, total, reference)


def _counted_flops(*, num_patches: int, num_pixels: int, inner_dim: int, mlp_ratio: float) -> int:
    """What ``FlopCounterMode`` counts for one inner block on ``(num_patches, num_pixels, inner_dim)``."""
    block = set_fast_path(TransformerBlock(dim=inner_dim, num_heads=2, mlp_ratio=mlp_ratio), False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.zeros(num_patches, num_pixels, inner_dim))
    return counter.get_total_flops()
