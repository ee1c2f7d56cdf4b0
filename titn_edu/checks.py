"""Coursework checkers: does a student's implementation agree with the library?

Each checker takes the student's function or class, runs it next to the library's reference on
several seeded random inputs of different shapes, and then either

* prints one line (``✓ attention passed: 4/4 cases match ...``) and returns ``None``, or
* raises ``AssertionError`` naming the first difference: which case (input shapes), which output,
  the shape mismatch or the largest absolute error and where, and a hint when the mistake is a
  known one (missing ``√d_k``, softmax over the wrong axis, wrong patch order, missing residual …).

So the same call works in a notebook (a readable message) and in an autograder (an exception).
Exceptions raised by the student's code are re-raised as ``AssertionError`` with the case attached.

Functions are called exactly like their library counterparts (see each checker's docstring).

Classes (``multi_head_attention``, ``mlp``, ``transformer_block``, ``inner_outer_block``) are handled
the same way every time:

1. the student's class is built with **the same constructor arguments** as the library class
   (listed in each docstring);
2. its ``state_dict()`` must have **the same parameter names and shapes** as the library module's
   (the checker lists every missing, unexpected or wrongly shaped entry otherwise);
3. the checker builds the reference module with seeded random weights (LayerNorm scales and all
   biases included, so forgetting one is caught), copies them into the student's module with
   ``load_state_dict(strict=True)``, puts both in ``eval()`` mode and compares the outputs.

Inputs and weights come from private random generators, and the global random state is restored
afterwards: calling a checker does not change what the rest of a notebook computes.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NoReturn, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import MultiHeadAttention, scaled_dot_product_attention
from .blocks import TITNBlock, TransformerBlock
from .data import DATASETS, MEAN, STD, get_transforms
from .embeddings import patchify as _ref_patchify
from .embeddings import pixelify as _ref_pixelify
from .layers import Mlp

__all__ = [
    "preprocess",
    "attention",
    "multi_head_attention",
    "layer_norm",
    "mlp",
    "transformer_block",
    "patchify",
    "pixelify",
    "inner_outer_block",
    "embed_tokens",
    "block_parameters",
]

_ATOL, _RTOL = 1e-5, 1e-4  # float32 agreement expected from a correct implementation


# ----------------------------------------------------------------------- internals
def _fail(check: str, case: int, total: int, desc: str, message: str, hint: str | None = None) -> NoReturn:
    text = f"{check} check failed on case {case + 1} of {total} ({desc}): {message}"
    if hint:
        text += f"\nHint: {hint}"
    raise AssertionError(text)


def _passed(check: str, total: int, reference: str) -> None:
    print(f"✓ {check} passed: {total}/{total} cases match {reference}.")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _difference(got: Any, want: Tensor, name: str, *, atol: float = _ATOL, rtol: float = _RTOL) -> str | None:
    """``None`` when ``got`` matches ``want``, else a sentence saying how it differs."""
    if not isinstance(got, Tensor):
        return f"{name} should be a torch.Tensor of shape {tuple(want.shape)}; got {type(got).__name__}."
    if tuple(got.shape) != tuple(want.shape):
        return f"{name} has shape {tuple(got.shape)}; expected {tuple(want.shape)}."
    if not got.is_floating_point():
        return f"{name} has dtype {got.dtype}; expected a floating-point tensor like {want.dtype}."
    got64, want64 = got.detach().double(), want.detach().double()
    if not torch.isfinite(got64).all():
        return f"{name} contains NaN or infinite values."
    err = (got64 - want64).abs()
    if bool((err <= atol + rtol * want64.abs()).all()):
        return None
    index = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return (
        f"the values of {name} differ from the reference: max abs error {err.max().item():.2g} at index {index} "
        f"(yours {got64[index].item():.4g}, expected {want64[index].item():.4g})."
    )


def _close(a: Any, b: Tensor, atol: float = 1e-4) -> bool:
    return isinstance(a, Tensor) and a.shape == b.shape and bool(torch.allclose(a.detach().double(), b.double(), atol=atol, rtol=1e-3))


def _call(check: str, case: int, total: int, desc: str, fn: Callable, *args, hint: str | None = None, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except AssertionError:
        raise
    except Exception as err:  # the student's code failed: report it with the case it failed on
        _fail(check, case, total, desc, f"your implementation raised {type(err).__name__}: {err}", hint)


def _unchanged(check: str, case: int, total: int, desc: str, inputs: dict[str, Tensor], copies: dict[str, Tensor]) -> None:
    for name, t in inputs.items():
        if not torch.equal(t, copies[name]):
            _fail(check, case, total, desc, f"your implementation changed its input `{name}` in place.",
                  "use out-of-place operations (x - mean, not x.sub_(mean)).")


def _require_callable(check: str, obj: Any, what: str) -> None:
    if not callable(obj):
        raise TypeError(f"checks.{check} expects {what}; got {type(obj).__name__}.")


def _require_class(check: str, obj: Any, reference: str) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise TypeError(
            f"checks.{check} expects your class (a torch.nn.Module subclass, not an instance) with the same "
            f"constructor as {reference}; got {obj!r}."
        )


def _randomise(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Seeded weights everywhere, incl. LayerNorm scales and biases (so forgetting one shows)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return module.eval()


def _build(check: str, cls: type, reference: str, args: tuple, kwargs: dict) -> nn.Module:
    call = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    try:
        module = cls(*args, **kwargs)
    except Exception as err:
        raise AssertionError(
            f"{check} check could not build your class with {cls.__name__}({call}): {type(err).__name__}: {err}\n"
            f"Hint: its constructor must accept the same arguments as {reference}."
        ) from err
    if not isinstance(module, nn.Module):
        raise AssertionError(f"{check} check: {cls.__name__}({call}) did not return a torch.nn.Module.")
    return module


def _copy_weights(check: str, student: nn.Module, ref: nn.Module, reference: str) -> None:
    """Load the reference state_dict into the student's module; explain any name/shape mismatch."""
    mine, theirs = student.state_dict(), ref.state_dict()
    missing = [k for k in theirs if k not in mine]
    unexpected = [k for k in mine if k not in theirs]
    wrong = [f"{k} {tuple(mine[k].shape)} (expected {tuple(theirs[k].shape)})"
             for k in theirs if k in mine and mine[k].shape != theirs[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected))
        if wrong:
            parts.append("wrong shape: " + "; ".join(wrong))
        expected = ", ".join(f"{k} {tuple(v.shape)}" for k, v in theirs.items())
        raise AssertionError(
            f"{check} check: your module's parameters must have the same names and shapes as {reference}'s, so "
            f"that the reference weights can be copied into it. " + "; ".join(parts) + f".\nExpected: {expected}."
        )
    student.load_state_dict(theirs, strict=True)
    student.eval()


def _keeps_global_rng(checker: Callable) -> Callable:
    """Run a checker with the global CPU random state saved and restored (building modules draws from it)."""

    @functools.wraps(checker)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return checker(*args, **kwargs)

    return wrapper


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- data
_RAW_SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


@_keeps_global_rng
def preprocess(student_fn: Callable, dataset: str) -> None:
    """Check a test-time preprocessing against ``titn_edu.get_transforms(dataset, train=False)``.

    ``student_fn(image)`` takes one stored image, a ``uint8`` tensor ``(C, H, W)`` with values
    0…255 (MNIST ``(1, 28, 28)``, CIFAR ``(3, 32, 32)``), and returns what the model sees: a float
    tensor ``(C, 32, 32)`` scaled to [0, 1] and normalised per channel with ``titn_edu.data.MEAN`` /
    ``STD`` of the dataset (MNIST is first padded by 2 black pixels on every side).
    """
    _require_callable("preprocess", student_fn, "a function (uint8 image (C, H, W)) -> float image (C, 32, 32)")
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}; got {dataset!r}.")
    name = dataset.lower()
    check, reference = f"preprocess[{name}]", f"titn_edu.get_transforms({name!r}, train=False)"
    shape = _RAW_SHAPE[name]
    g = _gen(90)
    images = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) for _ in range(3)]
    images += [torch.zeros(shape, dtype=torch.uint8), torch.full(shape, 255, dtype=torch.uint8)]
    descs = ["random image 1", "random image 2", "random image 3", "black image", "white image"]
    transform = get_transforms(name, train=False)
    mean = torch.tensor(MEAN[name])[:, None, None]
    std = torch.tensor(STD[name])[:, None, None]
    pad = 2 if name == "mnist" else 0
    total = len(images)
    for i, (image, what) in enumerate(zip(images, descs)):
        desc = f"{what}, uint8 {tuple(shape)}"
        want = transform(image.clone())
        inputs = dict(image=image.clone())
        got = _call(check, i, total, desc, student_fn, inputs["image"])
        _unchanged(check, i, total, desc, inputs, dict(image=image))
        problem = _difference(got, want, "the preprocessed image")
        if problem:
            x = F.pad(image, (pad, pad, pad, pad)).float()
            variants = [
                ((x - mean) / std, "scale the uint8 values to [0, 1] (divide by 255) before normalising."),
                (x / 255, "normalise with the dataset's mean and std: (x - MEAN) / STD, per channel."),
                ((x / 255 - 0.5) / 0.5, "use the dataset's own statistics (titn_edu.data.MEAN / STD), not 0.5."),
                ((x / 255 - torch.tensor([0.485, 0.456, 0.406][: shape[0]])[:, None, None])
                 / torch.tensor([0.229, 0.224, 0.225][: shape[0]])[:, None, None],
                 "those are ImageNet's statistics; use the dataset's own (titn_edu.data.MEAN / STD)."),
                ((x / 255 - mean) * std, "divide by the standard deviation, do not multiply."),
            ]
            if pad:
                variants.append((F.pad((image.float() / 255 - mean) / std, (pad, pad, pad, pad)),
                                 "pad before normalising: the border is black in pixel values (0), not 0 after normalising."))
            hint = next((text for cand, text in variants if _close(got, cand)), None)
            if hint is None and isinstance(got, Tensor) and pad and tuple(got.shape[-2:]) == tuple(shape[-2:]):
                hint = "MNIST digits are 28×28: pad them by 2 pixels on every side to 32×32 (F.pad(x, (2, 2, 2, 2)))."
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


# ----------------------------------------------------------------------- attention
def _attention_hint(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, weights: Any) -> str | None:
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
    variants = [
        (soft(raw), "you forgot to scale the scores: divide q @ k^T by √d_k before the softmax."),
        (soft(raw / d_k), "you divided by d_k; eq. 1 divides by its square root √d_k."),
        (soft(raw * math.sqrt(d_k)), "you multiplied by √d_k; eq. 1 divides by it."),
        (soft(raw / math.sqrt(d_v)) if d_v != d_k else None,
         "you scaled by the value size; d_k is the size of the queries and keys (q.shape[-1])."),
        (soft(raw / math.sqrt(d_k)).transpose(-2, -1) if q.shape[-2] == k.shape[-2] else None,
         "your weights are transposed: weights[..., i, j] is how much query i attends to key j."),
    ]
    if mask is not None:
        variants.append(((raw / math.sqrt(d_k)).softmax(-1),
                         "the mask is ignored: set masked scores to -inf before the softmax (scores.masked_fill(~mask, float('-inf')))."))
    for candidate, hint in variants:
        if candidate is not None and _close(w, candidate):
            return hint
    return None


@_keeps_global_rng
def attention(student_fn: Callable, *, mask: bool = False) -> None:
    """Check eq. 1 against :func:`titn_edu.attention.scaled_dot_product_attention`.

    ``student_fn(q, k, v)`` (and ``student_fn(q, k, v, mask=mask)`` when ``mask=True``) must return
    ``(output, weights)``: output ``(..., L, d_v)`` and softmax weights ``(..., L, S)``. Cases cover
    batched and multi-head shapes, different query/key lengths and ``d_v != d_k``.
    """
    _require_callable("attention", student_fn, "a function (q, k, v) -> (output, weights)")
    check, reference = "attention", "titn_edu.attention.scaled_dot_product_attention"
    shapes = [
        ((2, 5, 8), (2, 5, 8), (2, 5, 8), 1.0),
        ((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 5), 1.0),
        ((1, 4, 6, 64), (1, 4, 6, 64), (1, 4, 6, 64), 1.0),
        ((3, 10, 32), (3, 4, 32), (3, 4, 12), 2.0),
    ]
    cases = []
    for seed, (qs, ks, vs, gain) in enumerate(shapes):
        g = _gen(seed)
        cases.append(dict(q=gain * torch.randn(qs, generator=g), k=torch.randn(ks, generator=g),
                          v=torch.randn(vs, generator=g), mask=None))
    if mask:
        g = _gen(100)
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        cases.append(dict(q=torch.randn(2, 6, 8, generator=g), k=torch.randn(2, 6, 8, generator=g),
                          v=torch.randn(2, 6, 4, generator=g), mask=causal.expand(2, 6, 6)))
        rnd = torch.rand(2, 2, 5, 7, generator=g) < 0.6
        rnd[..., 0] = True  # every query sees at least one key
        cases.append(dict(q=torch.randn(2, 2, 5, 8, generator=g), k=torch.randn(2, 2, 7, 8, generator=g),
                          v=torch.randn(2, 2, 7, 3, generator=g), mask=rnd))
    total = len(cases)
    for i, case in enumerate(cases):
        q, k, v, m = case["q"], case["k"], case["v"], case["mask"]
        desc = f"q {_shape(q)}, k {_shape(k)}, v {_shape(v)}" + (f", mask {_shape(m)}" if m is not None else "")
        want_out, want_w = scaled_dot_product_attention(q, k, v, mask=m)
        inputs = dict(q=q.clone(), k=k.clone(), v=v.clone())
        kwargs = {"mask": m.clone()} if m is not None else {}
        with torch.no_grad():
            result = _call(check, i, total, desc, student_fn, inputs["q"], inputs["k"], inputs["v"], **kwargs)
        _unchanged(check, i, total, desc, inputs, dict(q=q, k=k, v=v))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            _fail(check, i, total, desc, f"expected a pair (output, weights); got {type(result).__name__}.",
                  "return both: `return weights @ v, weights`.")
        out, w = result
        problem = _difference(w, want_w, "weights")
        if problem:
            _fail(check, i, total, desc, problem, _attention_hint(q, k, v, m, w))
        problem = _difference(out, want_out, "output")
        if problem:
            hint = "the weights are right, so look at the last step: output = weights @ v."
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


def _mha_variant(ref: MultiHeadAttention, x: Tensor, *, split: str, merge: str, scale_dim: int) -> Tensor:
    qkv = ref.qkv(x)
    q, k, v = rearrange(qkv, f"b t {split} -> three b h t d", three=3, h=ref.num_heads)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(scale_dim)).softmax(-1)
    return ref.proj(rearrange(weights @ v, f"b h t d -> b t {merge}"))


@_keeps_global_rng
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
    _require_class(check, StudentClass, reference)
    configs = [(8, 1, 2, 5, False), (12, 3, 2, 7, False), (16, 4, 1, 10, True), (24, 6, 2, 17, False)]
    total = len(configs)
    for i, (dim, heads, batch, tokens, bias) in enumerate(configs):
        desc = f"dim={dim}, num_heads={heads}, qkv_bias={bias}, x ({batch}, {tokens}, {dim})"
        g = _gen(10 + i)
        ref = _randomise(MultiHeadAttention(dim, heads, qkv_bias=bias), g)
        student = _build(check, StudentClass, reference, (dim, heads), {"qkv_bias": bias})
        _copy_weights(check, student, ref, reference)
        x = torch.randn(batch, tokens, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = _call(check, i, total, desc, student, x.clone())
            problem = _difference(got, want, "output")
            if problem:
                hint = None
                if isinstance(got, Tensor) and got.shape == want.shape:
                    variants = [
                        (dict(split="(three h d)", merge="(h d)", scale_dim=dim),
                         "scale each head by √(head size) = √(dim // num_heads), not √dim."),
                        (dict(split="(h three d)", merge="(h d)", scale_dim=dim // heads),
                         "split qkv as 'b t (three h d) -> three b h t d': all queries first, then keys, then values."),
                        (dict(split="(three d h)", merge="(h d)", scale_dim=dim // heads),
                         "each head owns a contiguous block of d features: split with '(three h d)', not '(three d h)'."),
                        (dict(split="(three h d)", merge="(d h)", scale_dim=dim // heads),
                         "concatenate the heads with 'b h t d -> b t (h d)' (head by head), not '(d h)'."),
                    ]
                    for kwargs, text in variants:
                        if _close(got, _mha_variant(ref, x, **kwargs)):
                            hint = text
                            break
                    if hint is None:
                        hint = ("with a single head it already differs: check eq. 1 (checks.attention) and that "
                                "proj is applied after concatenating the heads." if heads == 1 else
                                "one head works but several do not: check how you split qkv into heads and merge them back.")
                _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


# ------------------------------------------------------------ layer norm, MLP, block
@_keeps_global_rng
def layer_norm(student_fn: Callable) -> None:
    """Check eq. 6 against :func:`torch.nn.functional.layer_norm` (what ``torch.nn.LayerNorm`` computes).

    ``student_fn(x, weight, bias, eps=1e-5)`` normalises ``x`` over its last axis with the biased
    variance, then scales by ``weight`` (γ) and shifts by ``bias`` (β), both of shape ``(x.shape[-1],)``.
    """
    _require_callable("layer_norm", student_fn, "a function (x, weight, bias, eps=1e-5) -> Tensor")
    check, reference = "layer_norm", "torch.nn.functional.layer_norm"
    configs = [((2, 5, 8), None), ((3, 16), None), ((1, 4, 7, 12), 0.1), ((2, 3), 1e-3)]
    total = len(configs)
    for i, (shape, eps) in enumerate(configs):
        g = _gen(20 + i)
        x = 3.0 + 2.0 * torch.randn(shape, generator=g)
        dim = shape[-1]
        weight = 1.0 + 0.3 * torch.randn(dim, generator=g)
        bias = 0.3 * torch.randn(dim, generator=g)
        eps_used = 1e-5 if eps is None else eps
        desc = f"x {tuple(shape)}" + (f", eps={eps}" if eps is not None else "")
        want = F.layer_norm(x, (dim,), weight, bias, eps_used)
        kwargs = {} if eps is None else {"eps": eps}
        inputs = dict(x=x.clone(), weight=weight.clone(), bias=bias.clone())
        with torch.no_grad():
            got = _call(check, i, total, desc, student_fn, inputs["x"], inputs["weight"], inputs["bias"], **kwargs)
        _unchanged(check, i, total, desc, inputs, dict(x=x, weight=weight, bias=bias))
        problem = _difference(got, want, "output")
        if problem:
            mean = x.mean(-1, keepdim=True)
            var = x.var(-1, keepdim=True, unbiased=False)
            variants = [
                ((x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps_used) * weight + bias,
                 "use the biased variance (x.var(-1, unbiased=False), the mean of squared deviations), as LayerNorm does."),
                ((x - mean) / (var.sqrt() + eps_used) * weight + bias, "add eps inside the square root: sqrt(var + eps)."),
                ((x - mean) / torch.sqrt(var + eps_used), "you forgot the affine part: multiply by weight (γ) and add bias (β)."),
                ((x - mean) / torch.sqrt(var + eps_used) * weight, "you forgot to add bias (β)."),
                (x / torch.sqrt(var + eps_used) * weight + bias, "subtract the mean before dividing."),
                ((x - mean) / torch.sqrt(var + 1e-5) * weight + bias, "use the eps you are given, not a fixed value."),
            ]
            if x.dim() >= 2:
                m0, v0 = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
                variants.append(((x - m0) / torch.sqrt(v0 + eps_used) * weight + bias,
                                 "normalise each token over its features, the last axis (dim=-1), not over the batch."))
            hint = next((text for cand, text in variants if _close(got, cand)), None)
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


@_keeps_global_rng
def mlp(StudentClass: type) -> None:
    """Check eq. 4–5 against :class:`titn_edu.Mlp`.

    ``StudentClass(dim, hidden_dim)`` must have ``fc1 = nn.Linear(dim, hidden_dim)`` and
    ``fc2 = nn.Linear(hidden_dim, dim)`` (an activation module without parameters may sit between
    them); ``module(x)`` computes ``fc2(GELU(fc1(x)))`` with the exact (erf) GELU.
    """
    check, reference = "mlp", "titn_edu.Mlp"
    _require_class(check, StudentClass, reference)
    configs = [(8, 32, (2, 5)), (12, 24, (3, 4)), (6, 48, (1, 9))]
    total = len(configs)
    for i, (dim, hidden, lead) in enumerate(configs):
        desc = f"dim={dim}, hidden_dim={hidden}, x {lead + (dim,)}"
        g = _gen(30 + i)
        ref = _randomise(Mlp(dim, hidden), g)
        student = _build(check, StudentClass, reference, (dim, hidden), {})
        _copy_weights(check, student, ref, reference)
        x = 2.0 * torch.randn(*lead, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = _call(check, i, total, desc, student, x.clone())
            problem = _difference(got, want, "output")
            if problem:
                h = ref.fc1(x)
                variants = [
                    (ref.fc2(F.relu(h)), "that is ReLU; eq. 4 uses σ = GELU (nn.GELU())."),
                    (ref.fc2(F.gelu(h, approximate="tanh")), "use the exact GELU, x·Φ(x) with erf (nn.GELU()), not the tanh approximation."),
                    (ref.fc2(h), "the activation σ between the two linear layers is missing."),
                    (F.gelu(ref.fc2(h)), "apply GELU between fc1 and fc2, not after fc2."),
                ]
                hint = next((text for cand, text in variants if _close(got, cand)), None)
                _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


@_keeps_global_rng
def transformer_block(StudentClass: type) -> None:
    """Check the pre-norm block against :class:`titn_edu.TransformerBlock`.

    ``StudentClass(dim=, num_heads=, mlp_ratio=)`` (keyword arguments) must have ``norm1``, ``attn``
    (parameters ``qkv``, ``proj`` like :class:`titn_edu.MultiHeadAttention`), ``norm2`` and ``mlp``
    (``fc1``, ``fc2`` like :class:`titn_edu.Mlp` with ``hidden_dim = int(dim * mlp_ratio)``), and
    compute ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    """
    check, reference = "transformer_block", "titn_edu.TransformerBlock"
    _require_class(check, StudentClass, reference)
    configs = [(8, 2, 2.0, (2, 5)), (12, 3, 4.0, (1, 7)), (16, 4, 1.0, (2, 3))]
    total = len(configs)
    for i, (dim, heads, ratio, (batch, tokens)) in enumerate(configs):
        desc = f"dim={dim}, num_heads={heads}, mlp_ratio={ratio}, x ({batch}, {tokens}, {dim})"
        g = _gen(40 + i)
        kwargs = dict(dim=dim, num_heads=heads, mlp_ratio=ratio)
        ref = _randomise(TransformerBlock(**kwargs), g)
        student = _build(check, StudentClass, reference, (), kwargs)
        _copy_weights(check, student, ref, reference)
        x = torch.randn(batch, tokens, dim, generator=g)
        with torch.no_grad():
            want = ref(x)
            got = _call(check, i, total, desc, student, x.clone())
            problem = _difference(got, want, "output")
            if problem:
                y = ref.attn(ref.norm1(x))
                a = x + y
                post = ref.norm1(x + ref.attn(x))
                variants = [
                    (ref.mlp(ref.norm2(y)), "both residual connections are missing: x = x + attn(norm1(x)), then x = x + mlp(norm2(x))."),
                    (y + ref.mlp(ref.norm2(y)), "the residual around the attention is missing: x = x + attn(norm1(x))."),
                    (ref.mlp(ref.norm2(a)), "the residual around the MLP is missing: x = x + mlp(norm2(x))."),
                    (a + ref.mlp(ref.norm2(x)), "the MLP branch must read the updated x (after the attention residual)."),
                    (ref.norm2(post + ref.mlp(post)),
                     "this is a post-norm block; TITN is pre-norm: normalise the input of each branch, x + f(LN(x))."),
                    (a + ref.mlp(ref.norm1(a)), "use norm2 (not norm1 again) before the MLP."),
                ]
                hint = next((text for cand, text in variants if _close(got, cand)), None)
                _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


# ------------------------------------------------------------------ patches, pixels
_PATCH_VARIANTS = [
    ("b c (h p1) (w p2) -> b (w h) (p1 p2 c)", "your patches are in column-major order; number them row by row: '(h w)'."),
    ("b c (h p1) (w p2) -> b (h w) (c p1 p2)", "inside a patch order the values (row, column, channel): '(p1 p2 c)', not '(c p1 p2)'."),
    ("b c (h p1) (w p2) -> b (h w) (p2 p1 c)", "inside a patch go row by row: '(p1 p2 c)', not '(p2 p1 c)'."),
    ("b c (p1 h) (p2 w) -> b (h w) (p1 p2 c)", "a patch is a block of neighbouring pixels: split the height as '(h p1)', not '(p1 h)'."),
]


def _image_cases(seed0: int, shapes: Sequence[tuple]) -> list[Tensor]:
    return [torch.randn(shape, generator=_gen(seed0 + i)) for i, shape in enumerate(shapes)]


@_keeps_global_rng
def patchify(student_fn: Callable) -> None:
    """Check :func:`titn_edu.patchify`: ``student_fn(images, patch_size)``, ``(B, C, H, W) -> (B, N, p·p·C)``.

    Patches in row-major order; inside a patch the values ordered (row, column, channel).
    """
    _require_callable("patchify", student_fn, "a function (images, patch_size) -> Tensor")
    check, reference = "patchify", "titn_edu.patchify"
    configs = [((2, 3, 8, 8), 4), ((1, 1, 28, 28), 7), ((2, 3, 32, 32), 8), ((1, 3, 16, 8), 4), ((2, 3, 32, 32), 16)]
    images = _image_cases(50, [c[0] for c in configs])
    total = len(configs)
    for i, ((shape, p), x) in enumerate(zip(configs, images)):
        desc = f"images {tuple(shape)}, patch_size={p}"
        want = _ref_patchify(x, p)
        inputs = dict(images=x.clone())
        got = _call(check, i, total, desc, student_fn, inputs["images"], p)
        _unchanged(check, i, total, desc, inputs, dict(images=x))
        problem = _difference(got, want, "patches")
        if problem:
            hint = next((text for pattern, text in _PATCH_VARIANTS
                         if _close(got, rearrange(x, pattern, p1=p, p2=p))), None)
            if hint is None and isinstance(got, Tensor) and got.shape == want.shape and torch.equal(
                    got.reshape(shape[0], -1).sort(-1).values, want.reshape(shape[0], -1).sort(-1).values):
                hint = "you have the right numbers in a different order: check the axis order of your rearrange."
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


@_keeps_global_rng
def pixelify(student_fn: Callable) -> None:
    """Check :func:`titn_edu.pixelify`: ``student_fn(images, patch_size, pixel_size)``,
    ``(B, C, H, W) -> (B, N, P, m·m·C)``: patches and the pixels inside each patch in row-major
    order, a pixel's values ordered (row, column, channel)."""
    _require_callable("pixelify", student_fn, "a function (images, patch_size, pixel_size) -> Tensor")
    check, reference = "pixelify", "titn_edu.pixelify"
    configs = [((2, 3, 8, 8), 4, 2), ((1, 1, 28, 28), 14, 7), ((2, 3, 32, 32), 8, 2), ((1, 3, 16, 16), 8, 4)]
    images = _image_cases(60, [c[0] for c in configs])
    total = len(configs)
    for i, ((shape, p, m), x) in enumerate(zip(configs, images)):
        desc = f"images {tuple(shape)}, patch_size={p}, pixel_size={m}"
        want = _ref_pixelify(x, p, m)
        inputs = dict(images=x.clone())
        got = _call(check, i, total, desc, student_fn, inputs["images"], p, m)
        _unchanged(check, i, total, desc, inputs, dict(images=x))
        problem = _difference(got, want, "pixels")
        if problem:
            k = p // m
            dims = dict(ph=k, pw=k, m1=m, m2=m)
            variants = [
                ("b c (h ph m1) (w pw m2) -> b (w h) (ph pw) (m1 m2 c)", "number the patches row by row: '(h w)'."),
                ("b c (h ph m1) (w pw m2) -> b (h w) (pw ph) (m1 m2 c)", "number the pixels inside a patch row by row: '(ph pw)'."),
                ("b c (h ph m1) (w pw m2) -> b (h w) (ph pw) (c m1 m2)", "order a pixel's values (row, column, channel): '(m1 m2 c)'."),
                ("b c (ph h m1) (pw w m2) -> b (h w) (ph pw) (m1 m2 c)", "split the image into patches first, then each patch into pixels: '(h ph m1)'."),
            ]
            hint = next((text for pattern, text in variants if _close(got, rearrange(x, pattern, **dims))), None)
            if hint is None and isinstance(got, Tensor) and got.shape == (shape[0], (shape[2] // p) ** 2, k * k, m * m * shape[1]):
                hint = "right shape, wrong order: check the axis order of your rearrange."
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


# --------------------------------------------------------------------- TITN block
@_keeps_global_rng
def inner_outer_block(StudentBlock: type) -> None:
    """Check one TITN block (Fig. 1) against :class:`titn_edu.TITNBlock`.

    ``StudentBlock(outer_dim=, inner_dim=, num_pixels=, outer_heads=, inner_heads=, mlp_ratio=,
    num_prefix=, num_suffix=)`` (keyword arguments) must have the library's parameter names:
    ``inner`` (a :class:`titn_edu.TransformerBlock` over ``inner_dim``), ``patch_residual``
    (``norm`` = LayerNorm(P·c), ``proj`` = Linear(P·c, D)) and ``outer`` (a TransformerBlock over
    ``outer_dim``). ``block(pixels, tokens)`` takes pixels ``(B·N, P, c)`` and tokens
    ``(B, num_prefix + N + num_suffix, D)`` and returns the new ``(pixels, tokens)``.
    """
    check, reference = "inner_outer_block", "titn_edu.TITNBlock"
    _require_class(check, StudentBlock, reference)
    configs = [
        dict(outer_dim=16, inner_dim=4, num_pixels=4, outer_heads=2, inner_heads=1, mlp_ratio=2.0, num_prefix=1, num_suffix=1, batch=2, patches=4),
        dict(outer_dim=24, inner_dim=6, num_pixels=16, outer_heads=3, inner_heads=2, mlp_ratio=4.0, num_prefix=1, num_suffix=0, batch=1, patches=9),
        dict(outer_dim=12, inner_dim=8, num_pixels=4, outer_heads=2, inner_heads=2, mlp_ratio=1.0, num_prefix=2, num_suffix=1, batch=3, patches=4),
    ]
    total = len(configs)
    for i, cfg in enumerate(configs):
        cfg = dict(cfg)
        batch, patches = cfg.pop("batch"), cfg.pop("patches")
        tokens_len = cfg["num_prefix"] + patches + cfg["num_suffix"]
        desc = (f"pixels ({batch * patches}, {cfg['num_pixels']}, {cfg['inner_dim']}), tokens ({batch}, {tokens_len}, "
                f"{cfg['outer_dim']}), num_prefix={cfg['num_prefix']}, num_suffix={cfg['num_suffix']}")
        g = _gen(70 + i)
        ref = _randomise(TITNBlock(**cfg), g)
        student = _build(check, StudentBlock, reference, (), cfg)
        _copy_weights(check, student, ref, reference)
        pixels = torch.randn(batch * patches, cfg["num_pixels"], cfg["inner_dim"], generator=g)
        tokens = torch.randn(batch, tokens_len, cfg["outer_dim"], generator=g)
        with torch.no_grad():
            want_pixels, want_tokens = ref(pixels, tokens)
            inputs = dict(pixels=pixels.clone(), tokens=tokens.clone())
            result = _call(check, i, total, desc, student, inputs["pixels"], inputs["tokens"],
                           hint="this case has num_prefix={} and num_suffix={}: pad the residual with "
                                "self.num_prefix / self.num_suffix zero rows, not fixed numbers.".format(
                                    cfg["num_prefix"], cfg["num_suffix"]))
            _unchanged(check, i, total, desc, inputs, dict(pixels=pixels, tokens=tokens))
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                _fail(check, i, total, desc, f"expected a pair (pixels, tokens); got {type(result).__name__}.",
                      "return both streams: `return pixels, tokens`.")
            got_pixels, got_tokens = result
            problem = _difference(got_pixels, want_pixels, "pixels")
            if problem:
                _fail(check, i, total, desc, problem,
                      "the inner stream is just the inner transformer: pixels = self.inner(pixels).")
            problem = _difference(got_tokens, want_tokens, "tokens")
            if problem:
                pre, suf = cfg["num_prefix"], cfg["num_suffix"]
                flat = rearrange(want_pixels, "(b n) p c -> b n (p c)", b=batch)
                residual = ref.patch_residual.proj(ref.patch_residual.norm(flat))
                variants = [
                    (ref.outer(tokens), "the patch residual is missing: add the projected pixels to the patch tokens before the outer transformer."),
                    (ref.outer(tokens + F.pad(residual, (0, 0, pre + suf, 0))),
                     "the zero rows go in front for the class token(s) and at the back for the distillation token: F.pad(residual, (0, 0, num_prefix, num_suffix))."),
                    (ref.outer(tokens + F.pad(residual, (0, 0, 0, pre + suf))),
                     "the zero rows go in front for the class token(s) and at the back for the distillation token: F.pad(residual, (0, 0, num_prefix, num_suffix))."),
                    (ref.outer(tokens + F.pad(ref.patch_residual.proj(flat), (0, 0, pre, suf))),
                     "the patch residual normalises the flattened pixels before projecting them: proj(norm(flat))."),
                    (ref.outer(tokens) + F.pad(residual, (0, 0, pre, suf)),
                     "add the patch residual before the outer transformer, not after it."),
                    (ref.outer(tokens + F.pad(ref.patch_residual.proj(ref.patch_residual.norm(
                        rearrange(pixels, "(b n) p c -> b n (p c)", b=batch))), (0, 0, pre, suf))),
                     "build the patch residual from the pixels after the inner transformer, not from its input."),
                ]
                hint = next((text for cand, text in variants if _close(got_tokens, cand)), None)
                _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


# --------------------------------------------------------------- tokens, counting
@_keeps_global_rng
def embed_tokens(student_fn: Callable) -> None:
    """Check the outer token sequence against :meth:`titn_edu.TITN.embed`.

    ``student_fn(patches, cls_token, dist_token, pos_embed)`` with patches ``(B, N, D)``, tokens
    ``(1, 1, D)`` (``dist_token`` may be ``None``: ViT/TNT) and ``pos_embed`` ``(1, T, D)`` returns
    ``[class, patch_1 … patch_N, distillation] + pos_embed``, shape ``(B, T, D)``.
    """
    _require_callable("embed_tokens", student_fn, "a function (patches, cls_token, dist_token, pos_embed) -> Tensor")
    check, reference = "embed_tokens", "TITN.embed (class first, distillation last, plus positions)"
    configs = [(2, 4, 8, True), (1, 16, 12, True), (3, 9, 6, False)]
    total = len(configs)
    for i, (batch, n, dim, distill) in enumerate(configs):
        g = _gen(80 + i)
        patches = torch.randn(batch, n, dim, generator=g)
        cls = torch.randn(1, 1, dim, generator=g)
        dist = torch.randn(1, 1, dim, generator=g) if distill else None
        t = n + 1 + int(distill)
        pos = torch.randn(1, t, dim, generator=g)
        desc = f"patches ({batch}, {n}, {dim}), dist_token {'(1, 1, %d)' % dim if distill else 'None'}"
        parts = [cls.expand(batch, -1, -1), patches] + ([dist.expand(batch, -1, -1)] if distill else [])
        want = torch.cat(parts, dim=1) + pos
        inputs = dict(patches=patches.clone(), cls_token=cls.clone(), pos_embed=pos.clone())
        got = _call(check, i, total, desc, student_fn, inputs["patches"], inputs["cls_token"],
                    dist.clone() if distill else None, inputs["pos_embed"])
        _unchanged(check, i, total, desc, inputs, dict(patches=patches, cls_token=cls, pos_embed=pos))
        problem = _difference(got, want, "tokens")
        if problem:
            variants = [(torch.cat(parts, dim=1), "add the position embeddings to every token (after concatenating).")]
            if distill:
                variants.append((torch.cat([dist.expand(batch, -1, -1), cls.expand(batch, -1, -1), patches], 1) + pos,
                                 "the distillation token goes last: [class, patches, distillation]."))
                variants.append((torch.cat([cls.expand(batch, -1, -1), dist.expand(batch, -1, -1), patches], 1) + pos,
                                 "the distillation token goes last: [class, patches, distillation]."))
            variants.append((torch.cat(parts[::-1], dim=1) + pos, "the class token goes first."))
            hint = next((text for cand, text in variants if _close(got, cand)), None)
            if hint is None and isinstance(got, Tensor) and got.dim() == 3 and got.shape[0] == 1 and batch > 1:
                hint = "expand the tokens to the batch: cls_token.expand(B, -1, -1)."
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


@_keeps_global_rng
def block_parameters(student_fn: Callable) -> None:
    """Check a parameter-count formula for one TITN block against ``count_parameters(TITNBlock(...))``.

    ``student_fn(outer_dim=, inner_dim=, num_pixels=, mlp_ratio=)`` (keyword arguments) returns the
    number of parameters (an int). The heads do not change the count.
    """
    _require_callable("block_parameters", student_fn, "a function (*, outer_dim, inner_dim, num_pixels, mlp_ratio) -> int")
    check, reference = "block_parameters", "count_parameters(titn_edu.TITNBlock(...))"
    configs = [dict(outer_dim=192, inner_dim=12, num_pixels=16, mlp_ratio=4),
               dict(outer_dim=64, inner_dim=8, num_pixels=16, mlp_ratio=2),
               dict(outer_dim=192, inner_dim=12, num_pixels=16, mlp_ratio=1),
               dict(outer_dim=96, inner_dim=24, num_pixels=4, mlp_ratio=3)]
    total = len(configs)
    for i, cfg in enumerate(configs):
        desc = ", ".join(f"{k}={v}" for k, v in cfg.items())
        block = TITNBlock(outer_heads=1, inner_heads=1, **cfg)
        want = sum(p.numel() for p in block.parameters())
        got = _call(check, i, total, desc, student_fn, **cfg)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            _fail(check, i, total, desc, f"expected an int; got {type(got).__name__}.")
        if got != want:
            parts = {name: sum(p.numel() for p in getattr(block, name).parameters())
                     for name in ("inner", "patch_residual", "outer")}
            detail = ", ".join(f"{k} {v:,}" for k, v in parts.items())
            _fail(check, i, total, desc, f"you counted {got:,}; the block has {want:,} ({detail}).",
                  "a Linear(a, b) has a·b + b parameters, a LayerNorm(d) has 2·d; the attention has qkv (no bias) and proj.")
    _passed(check, total, reference)


# ----------------------------------------------------------------- part II: loss, CutMix, rollout
__all__ += ["titn_loss", "cutmix_box", "attention_rollout"]


def _scalar_difference(got: Any, want: Tensor, name: str) -> str | None:
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got))
    if not isinstance(got, Tensor) or got.numel() != 1:
        return f"{name} should be a scalar tensor (a batch mean); got {_shape(got)}."
    return _difference(got.reshape(()), want.reshape(()), name)


@_keeps_global_rng
def titn_loss(student_fn: Callable) -> None:
    r"""Check eq. 10 against :class:`titn_edu.losses.TITNLoss` (hard distillation).

    ``student_fn(class_logits, distill_logits, targets, teacher_logits, alpha)`` with logits ``(B, C)``,
    ``targets`` the CutMix soft labels ``(B, C)`` (rows sum to 1) and ``alpha`` a float returns the scalar
    :math:`\alpha\,\mathrm{CE}(t_c, y) + (1-\alpha)\,\mathrm{CE}(t_d, \arg\max T)` (batch means).
    """
    from .losses import TITNLoss

    _require_callable("titn_loss", student_fn, "a function (class_logits, distill_logits, targets, teacher_logits, alpha) -> scalar")
    check, reference = "titn_loss", "titn_edu.losses.TITNLoss(alpha=alpha) (eq. 10, hard distillation)"
    configs = [(4, 10, 0.5), (8, 5, 0.3), (3, 100, 0.9), (6, 10, 0.0)]
    total = len(configs)
    for i, (batch, classes, alpha) in enumerate(configs):
        g = _gen(200 + i)
        cls, dist = 2 * torch.randn(batch, classes, generator=g), 2 * torch.randn(batch, classes, generator=g)
        teacher = 3 * torch.randn(batch, classes, generator=g)
        y_a, y_b = torch.randint(classes, (batch,), generator=g), torch.randint(classes, (batch,), generator=g)
        lam = torch.rand(batch, 1, generator=g)
        targets = lam * F.one_hot(y_a, classes) + (1 - lam) * F.one_hot(y_b, classes)
        desc = f"batch {batch}, {classes} classes, alpha={alpha}"
        want = TITNLoss(alpha=alpha)(cls, dist, targets, teacher)
        inputs = dict(class_logits=cls.clone(), distill_logits=dist.clone(), targets=targets.clone(),
                      teacher_logits=teacher.clone())
        got = _call(check, i, total, desc, student_fn, *inputs.values(), alpha)
        _unchanged(check, i, total, desc, inputs, dict(class_logits=cls, distill_logits=dist, targets=targets,
                                                      teacher_logits=teacher))
        problem = _scalar_difference(got, want, "the loss")
        if problem:
            ce_cls = F.cross_entropy(cls, targets)
            hard_t = teacher.argmax(-1)
            variants = [
                ((1 - alpha) * ce_cls + alpha * F.cross_entropy(dist, hard_t),
                 "alpha weights the label (class-head) term, 1 - alpha the teacher term."),
                (alpha * ce_cls + (1 - alpha) * F.cross_entropy(dist, teacher.softmax(-1)),
                 "hard distillation uses the teacher's predicted class, argmax of its logits, not its probabilities."),
                (alpha * ce_cls + (1 - alpha) * F.kl_div(dist.log_softmax(-1), teacher.log_softmax(-1),
                                                         reduction="batchmean", log_target=True),
                 "that is soft distillation (KL); eq. 10 uses cross-entropy with the teacher's hard label."),
                (alpha * F.cross_entropy(cls, targets.argmax(-1)) + (1 - alpha) * F.cross_entropy(dist, hard_t),
                 "score the class head against the whole mixed target (eq. 9), not only its dominant class."),
                (alpha * F.cross_entropy(dist, targets) + (1 - alpha) * F.cross_entropy(cls, hard_t),
                 "the class head learns the labels, the distillation head the teacher: the heads are swapped."),
                (alpha * ce_cls * batch + (1 - alpha) * F.cross_entropy(dist, hard_t) * batch,
                 "take batch means, not sums."),
            ]
            hint = next((text for cand, text in variants if _close(got if isinstance(got, Tensor) else torch.tensor(float(got)), cand)), None) \
                if isinstance(got, (Tensor, int, float)) else None
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)


def _reference_cutmix_box(lam: float, height: int, width: int, cx: int, cy: int) -> tuple[tuple[int, int, int, int], float]:
    """The box ``torchvision.transforms.v2.CutMix`` pastes, and the λ it reports (area not pasted)."""
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x1, y1 = max(cx - half_w, 0), max(cy - half_h, 0)
    x2, y2 = min(cx + half_w, width), min(cy + half_h, height)
    return (x1, y1, x2, y2), 1.0 - (x2 - x1) * (y2 - y1) / (width * height)


def cutmix_box(student_fn: Callable) -> None:
    r"""Check a CutMix box against ``torchvision.transforms.v2.CutMix``'s rule (paper §3.5.2).

    ``student_fn(lam, height, width, cx, cy)`` returns ``((x1, y1, x2, y2), lam_adjusted)``: a box of
    half-sides ``int(½·√(1-λ)·W)`` and ``int(½·√(1-λ)·H)`` around the centre ``(cx, cy)``, clipped to the
    image (``x2``, ``y2`` exclusive), and the fraction of the image *not* covered by it,
    :math:`1 - \frac{(x_2-x_1)(y_2-y_1)}{HW}`, which is the label weight of the first image.
    """
    _require_callable("cutmix_box", student_fn, "a function (lam, height, width, cx, cy) -> ((x1, y1, x2, y2), lam)")
    check, reference = "cutmix_box", "torchvision.transforms.v2.CutMix's box rule"
    cases = [(0.5, 32, 32, 16, 16), (0.9, 32, 32, 10, 20), (0.2, 32, 32, 2, 30), (0.0, 28, 28, 14, 14),
             (1.0, 32, 32, 5, 5), (0.7, 24, 40, 39, 0)]
    total = len(cases)
    for i, (lam, h, w, cx, cy) in enumerate(cases):
        desc = f"lam={lam}, image {h}×{w}, centre ({cx}, {cy})"
        (want_box, want_lam) = _reference_cutmix_box(lam, h, w, cx, cy)
        got = _call(check, i, total, desc, student_fn, lam, h, w, cx, cy)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[0], (tuple, list)) or len(got[0]) != 4:
            _fail(check, i, total, desc, f"expected ((x1, y1, x2, y2), lam); got {got!r}.")
        box = tuple(int(v) for v in got[0])
        if box != want_box:
            r = math.sqrt(1.0 - lam)
            hint = None
            if box == (max(cx - int(r * w), 0), max(cy - int(r * h), 0), min(cx + int(r * w), w), min(cy + int(r * h), h)):
                hint = "the box's side is √(1-λ)·W, so its half-side is ½·√(1-λ)·W."
            elif box == (cx - int(0.5 * r * w), cy - int(0.5 * r * h), cx + int(0.5 * r * w), cy + int(0.5 * r * h)):
                hint = "clip the box to the image: x1 = max(cx - half, 0), x2 = min(cx + half, W)."
            elif box == (max(cx - int(0.5 * lam ** 0.5 * w), 0), max(cy - int(0.5 * lam ** 0.5 * h), 0),
                         min(cx + int(0.5 * lam ** 0.5 * w), w), min(cy + int(0.5 * lam ** 0.5 * h), h)):
                hint = "λ is the share of the *first* image: the pasted box covers 1 - λ, so its side is √(1-λ)·W."
            elif box == (max(cy - int(0.5 * r * h), 0), max(cx - int(0.5 * r * w), 0),
                         min(cy + int(0.5 * r * h), h), min(cx + int(0.5 * r * w), w)):
                hint = "x runs along the width (columns), y along the height (rows)."
            _fail(check, i, total, desc, f"your box is {box}; expected {want_box} (x1, y1, x2, y2).", hint)
        try:
            got_lam = float(got[1])
        except (TypeError, ValueError):
            _fail(check, i, total, desc, f"lam must be a number; got {type(got[1]).__name__}.")
        if abs(got_lam - want_lam) > 1e-6:
            hint = ("after clipping the box, recompute λ from its real area: 1 - (x2-x1)(y2-y1)/(H·W)."
                    if abs(got_lam - lam) < 1e-9 else
                    "λ is the share of the image *outside* the box: 1 - area/(H·W)."
                    if abs(got_lam - (1 - want_lam)) < 1e-6 else None)
            _fail(check, i, total, desc, f"your lam is {got_lam:.6f}; expected {want_lam:.6f}.", hint)
    _passed(check, total, reference)


@_keeps_global_rng
def attention_rollout(student_fn: Callable) -> None:
    r"""Check attention rollout against :func:`titn_edu.viz.attention_rollout`.

    ``student_fn(maps, token)`` takes the outer maps of one forward pass, a list of ``(B, heads, T, T)``
    tensors (first layer first), and a token index (``0`` class, ``-1`` distillation) and returns
    ``(B, N)``: row ``token`` of :math:`\hat A_L \cdots \hat A_1`, with
    :math:`\hat A_l = \mathrm{rownorm}(\mathrm{mean}_{heads} A_l + I)`, without the class (first) and
    distillation (last) tokens.
    """
    from .viz import attention_rollout as reference_rollout

    _require_callable("attention_rollout", student_fn, "a function (maps, token) -> (B, N)")
    check, reference = "attention_rollout", "titn_edu.viz.attention_rollout"
    configs = [(2, 3, 18, 4, 0), (1, 2, 6, 3, -1), (3, 4, 11, 1, 0), (2, 2, 18, 12, -1)]
    total = len(configs)
    for i, (batch, heads, t, layers, token) in enumerate(configs):
        g = _gen(300 + i)
        maps = [(2 * torch.randn(batch, heads, t, t, generator=g)).softmax(-1) for _ in range(layers)]
        desc = f"{layers} layer(s) of ({batch}, {heads}, {t}, {t}), token {token}"
        want = reference_rollout(maps, token=token)
        copies = [m.clone() for m in maps]
        got = _call(check, i, total, desc, student_fn, copies, token)
        for m, c in zip(maps, copies):
            if not torch.equal(m, c):
                _fail(check, i, total, desc, "your implementation changed the attention maps in place.",
                      "use out-of-place operations (a = a + eye, not a += eye).")
        problem = _difference(got, want, "the rollout", atol=1e-5, rtol=1e-4)
        if problem:
            eye = torch.eye(t)

            def roll(norm=True, identity=True, reverse=False, fuse="mean", lo=1, hi=t - 1):
                r = eye.expand(batch, t, t)
                for a in (maps[::-1] if reverse else maps):
                    a = getattr(a, fuse)(1) if fuse == "mean" else getattr(a, fuse)(1)
                    a = a + eye if identity else a
                    a = a / a.sum(-1, keepdim=True) if norm else a
                    r = a @ r
                return r[:, token, lo:hi]

            variants = [
                (roll(identity=False), "add the identity (the residual connection) to every layer's map: A + I."),
                (roll(norm=False), "renormalise each row after adding the identity: (A + I) / (A + I).sum(-1)."),
                (roll(fuse="amax"), "average the heads (mean over dim 1), not their maximum."),
                (roll(lo=1, hi=t), "drop both extra tokens: the class token is first, the distillation token last."),
                (roll(lo=2, hi=t), "TITN's order is [class, patches, distillation]: drop the first and the last token."),
            ]
            if layers > 1:
                variants.append((roll(reverse=True), "multiply in layer order: R = Â_L ··· Â_1 (each new layer on the left)."))
            hint = next((text for cand, text in variants if _close(got, cand, atol=1e-5)), None)
            _fail(check, i, total, desc, problem, hint)
    _passed(check, total, reference)
