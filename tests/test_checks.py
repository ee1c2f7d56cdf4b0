"""The coursework checkers accept correct implementations and catch subtly wrong ones with a useful message.

The library's own implementations are refused by every checker (tests/test_checks_guard.py); run with the
guard lifted (:func:`unguarded`) they pass, which shows that each checker's reference is the library's.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import titn_edu
from titn_edu import checks
from titn_edu.checks import guard


@contextlib.contextmanager
def unguarded():
    """The checkers with the watch for the library's own code lifted (for testing their references only)."""

    @contextlib.contextmanager
    def no_watch(self):
        yield []

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard.Forbidden, "watching", no_watch)
        mp.setattr(guard.Forbidden, "subclassed_by", lambda self, cls: None)
        yield


def fails(check, student, *needles: str) -> str:
    """Run ``check(student)``, expect an AssertionError whose message contains every needle."""
    with pytest.raises(AssertionError) as info:
        check(student)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in message:\n{message}"
    return message


# ----------------------------------------------------------------------- attention
def attention_ok(q, k, v, *, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def test_attention_accepts_correct_and_library(capsys):
    checks.attention(attention_ok)
    checks.attention(attention_ok, mask=True)
    with unguarded():
        checks.attention(titn_edu.scaled_dot_product_attention, mask=True)
    out = capsys.readouterr().out
    assert out.count("✓ attention passed") == 3
    assert "6/6 cases" in out
    fails(lambda f: checks.attention(f, mask=True), titn_edu.scaled_dot_product_attention, "runs titn_edu.attention")


@pytest.mark.parametrize("run", [lambda: checks.attention(attention_ok),
                                 lambda: checks.multi_head_attention(MHA),
                                 lambda: checks.inner_outer_block(TITNStudent),
                                 lambda: checks.attention(attention_ok, seed=3)])
def test_checkers_do_not_touch_global_rng(run):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run()
    assert torch.equal(torch.rand(3), expected)


def test_attention_missing_sqrt_dk():
    def wrong(q, k, v):
        weights = (q @ k.transpose(-2, -1)).softmax(-1)
        return weights @ v, weights

    msg = fails(checks.attention, wrong, "case 1 of 4", "weights", "max abs error", "√d_k")
    assert "forgot to scale" in msg


def test_attention_divides_by_dk():
    def wrong(q, k, v):
        weights = (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(-1)
        return weights @ v, weights

    fails(checks.attention, wrong, "divided by d_k")


def test_attention_softmax_over_wrong_axis():
    def wrong(q, k, v):
        weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-2)
        return weights @ v, weights

    fails(checks.attention, wrong, "columns", "dim=-1")


def test_attention_scaled_by_value_size():
    def wrong(q, k, v):
        weights = (q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1])).softmax(-1)
        return weights @ v, weights

    # Cases 1 (d_v == d_k) pass; case 2 has d_v != d_k.
    fails(checks.attention, wrong, "case 2 of 4", "value size")


def test_attention_wrong_output_and_return_type():
    def wrong_output(q, k, v):
        out, weights = attention_ok(q, k, v)
        return out + 1e-2, weights

    fails(checks.attention, wrong_output, "output", "weights @ v")
    fails(checks.attention, lambda q, k, v: attention_ok(q, k, v)[0], "expected a pair")


def test_attention_ignored_mask_and_crash():
    def no_mask(q, k, v, *, mask=None):
        return attention_ok(q, k, v)

    fails(lambda f: checks.attention(f, mask=True), no_mask, "case 5 of 6", "mask is ignored")

    def crash(q, k, v):
        raise RuntimeError("boom")

    fails(checks.attention, crash, "raised RuntimeError: boom")


def test_attention_in_place_change_detected():
    def in_place(q, k, v):
        q.mul_(1.0)  # harmless values, but q is modified in place ...
        q.add_(0.0)
        q[..., 0] = 0.0  # ... and this one changes it
        return attention_ok(q, k, v)

    fails(checks.attention, in_place, "in place")


def test_checkers_reject_non_callables():
    with pytest.raises(TypeError, match="expects"):
        checks.attention("not a function")
    with pytest.raises(TypeError, match="nn.Module subclass"):
        checks.multi_head_attention(titn_edu.MultiHeadAttention(8, 2))


# ---------------------------------------------------------------- multi-head attention
class MHA(nn.Module):
    """A from-scratch multi-head attention; ``variant`` switches in one known mistake."""

    variant = "ok"

    def __init__(self, dim, num_heads, *, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        split = "b t (h three d) -> three b h t d" if self.variant == "split" else "b t (three h d) -> three b h t d"
        q, k, v = rearrange(self.qkv(x), split, three=3, h=self.num_heads)
        scale = x.shape[-1] if self.variant == "scale" else q.shape[-1]
        weights = (q @ k.transpose(-2, -1) / math.sqrt(scale)).softmax(-1)
        merge = "b h t d -> b t (d h)" if self.variant == "merge" else "b h t d -> b t (h d)"
        return self.proj(rearrange(weights @ v, merge))


def mha(variant):
    return type(f"MHA_{variant}", (MHA,), {"variant": variant})


def test_multi_head_attention_correct(capsys):
    checks.multi_head_attention(MHA)
    with unguarded():
        checks.multi_head_attention(titn_edu.MultiHeadAttention)
    assert capsys.readouterr().out.count("✓ multi_head_attention passed: 4/4") == 2


@pytest.mark.parametrize(
    "variant, needle",
    [("scale", "head size"), ("split", "all queries first"), ("merge", "'b h t d -> b t (h d)'")],
)
def test_multi_head_attention_mistakes(variant, needle):
    # Single-head case 1 passes for all of these; they show up with several heads.
    fails(checks.multi_head_attention, mha(variant), "case 2 of 4", needle)


def test_multi_head_attention_wrong_parameters():
    class Separate(nn.Module):
        def __init__(self, dim, num_heads, *, qkv_bias=False):
            super().__init__()
            self.q, self.k, self.v = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
            self.proj = nn.Linear(dim, dim)

    msg = fails(checks.multi_head_attention, Separate, "same names and shapes", "missing: qkv.weight", "unexpected: q.weight")
    assert "Expected: qkv.weight (24, 8)" in msg

    class NoBiasArg(nn.Module):
        def __init__(self, dim, num_heads):
            super().__init__()

    fails(checks.multi_head_attention, NoBiasArg, "could not build", "qkv_bias")


# ---------------------------------------------------------------- layer norm and MLP
def ln_ok(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def test_layer_norm(capsys):
    checks.layer_norm(ln_ok)
    assert "✓ layer_norm passed: 4/4" in capsys.readouterr().out
    fails(checks.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b,
          "biased variance")
    fails(checks.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False).sqrt() + eps) * w + b,
          "inside the square root")
    fails(checks.layer_norm, lambda x, w, b, eps=1e-5: ln_ok(x, torch.ones_like(w), torch.zeros_like(b), eps), "affine")
    fails(checks.layer_norm, lambda x, w, b, eps=1e-5: ln_ok(x, w, b), "case 3 of 4", "use the eps you are given")


class MlpStudent(nn.Module):
    act = staticmethod(F.gelu)

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_mlp(capsys):
    checks.mlp(MlpStudent)
    with unguarded():
        checks.mlp(titn_edu.Mlp)
    assert capsys.readouterr().out.count("✓ mlp passed: 3/3") == 2
    relu = type("Relu", (MlpStudent,), {"act": staticmethod(F.relu)})
    fails(checks.mlp, relu, "ReLU")
    tanh = type("Tanh", (MlpStudent,), {"act": staticmethod(lambda h: F.gelu(h, approximate="tanh"))})
    fails(checks.mlp, tanh, "tanh approximation")


# ------------------------------------------------------------------- transformer block
class BlockStudent(nn.Module):
    variant = "ok"

    def __init__(self, *, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = titn_edu.MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = titn_edu.Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        if self.variant == "post":
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        y = self.attn(self.norm1(x))
        x = y if self.variant == "no_attn_residual" else x + y
        z = self.mlp(self.norm2(x))
        return z if self.variant == "no_mlp_residual" else x + z


@pytest.mark.parametrize(
    "variant, needle",
    [("no_attn_residual", "residual around the attention"), ("no_mlp_residual", "residual around the MLP"), ("post", "post-norm")],
)
def test_transformer_block_mistakes(variant, needle):
    fails(checks.transformer_block, type(variant, (BlockStudent,), {"variant": variant}), "case 1 of 3", needle)


def test_transformer_block_correct(capsys):
    checks.transformer_block(BlockStudent)
    with unguarded():
        checks.transformer_block(titn_edu.TransformerBlock)
    assert capsys.readouterr().out.count("✓ transformer_block passed: 3/3") == 2


# -------------------------------------------------------------------- patches/pixels
def test_patchify(capsys):
    def ok(images, patch_size):
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)

    checks.patchify(ok)
    assert "✓ patchify passed: 5/5" in capsys.readouterr().out

    def col_major(images, p):
        return rearrange(images, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p)

    # Case 1 (one channel would hide it) is 3-channel square: column-major patches differ already.
    fails(checks.patchify, col_major, "case 1 of 5", "patches", "column-major")

    def channels_first(images, p):
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)

    fails(checks.patchify, channels_first, "(p1 p2 c)")

    def unfold(images, p):  # F.unfold orders values (c, p1, p2): a classic slip
        return F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)

    fails(checks.patchify, unfold, "(p1 p2 c)")
    fails(checks.patchify, lambda images, p: images.reshape(images.shape[0], -1, p * p * images.shape[1]),
          "patches", "case 1 of 5")


def test_pixelify(capsys):
    with unguarded():
        checks.pixelify(titn_edu.pixelify)
    assert "✓ pixelify passed: 4/4" in capsys.readouterr().out

    def pixels_col_major(images, p, m):
        k = p // m
        return rearrange(images, "b c (h ph m1) (w pw m2) -> b (h w) (pw ph) (m1 m2 c)", ph=k, pw=k, m1=m, m2=m)

    fails(checks.pixelify, pixels_col_major, "pixels", "'(ph pw)'")


# --------------------------------------------------------------------- TITN block
class TITNStudent(nn.Module):
    """A from-scratch TITN block; ``variant`` switches in one known mistake."""

    variant = "ok"

    def __init__(self, *, outer_dim, inner_dim, num_pixels, outer_heads, inner_heads, mlp_ratio=4.0,
                 num_prefix=1, num_suffix=1):
        super().__init__()
        self.num_prefix, self.num_suffix = num_prefix, num_suffix
        self.inner = titn_edu.TransformerBlock(dim=inner_dim, num_heads=inner_heads, mlp_ratio=mlp_ratio)
        self.patch_residual = nn.Module()
        self.patch_residual.norm = nn.LayerNorm(num_pixels * inner_dim)
        self.patch_residual.proj = nn.Linear(num_pixels * inner_dim, outer_dim)
        self.outer = titn_edu.TransformerBlock(dim=outer_dim, num_heads=outer_heads, mlp_ratio=mlp_ratio)

    def forward(self, pixels, tokens):
        batch = tokens.shape[0]
        source = pixels
        pixels = self.inner(pixels)
        if self.variant != "residual_from_input":
            source = pixels
        flat = rearrange(source, "(b n) p c -> b n (p c)", b=batch)
        if self.variant != "no_norm":
            flat = self.patch_residual.norm(flat)
        residual = self.patch_residual.proj(flat)
        pad = {"fixed_pad": (0, 0, 1, 1), "front_pad": (0, 0, self.num_prefix + self.num_suffix, 0)}.get(
            self.variant, (0, 0, self.num_prefix, self.num_suffix))
        if self.variant == "no_residual":
            return pixels, self.outer(tokens)
        if self.variant == "after_outer":
            return pixels, self.outer(tokens) + F.pad(residual, pad)
        return pixels, self.outer(tokens + F.pad(residual, pad))


def titn_variant(variant):
    return type(f"TITN_{variant}", (TITNStudent,), {"variant": variant})


def test_inner_outer_block_correct(capsys):
    checks.inner_outer_block(TITNStudent)
    with unguarded():
        checks.inner_outer_block(titn_edu.TITNBlock)
    assert capsys.readouterr().out.count("✓ inner_outer_block passed: 3/3") == 2


@pytest.mark.parametrize(
    "variant, needles",
    [
        ("no_residual", ("case 1 of 3", "tokens", "patch residual is missing")),
        ("front_pad", ("case 1 of 3", "zero rows go in front")),
        ("no_norm", ("normalises the flattened pixels",)),
        ("after_outer", ("before the outer transformer",)),
        ("residual_from_input", ("after the inner transformer",)),
        ("fixed_pad", ("case 2 of 3", "raised RuntimeError", "self.num_prefix")),
    ],
)
def test_inner_outer_block_mistakes(variant, needles):
    fails(checks.inner_outer_block, titn_variant(variant), *needles)


def test_inner_outer_block_wrong_names():
    class Renamed(TITNStudent):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.pixel_to_patch = self.patch_residual
            del self.patch_residual

    fails(checks.inner_outer_block, Renamed, "missing: patch_residual.norm.weight", "unexpected: pixel_to_patch.norm.weight")


# ------------------------------------------------------------- tokens and counting
def test_embed_tokens(capsys):
    def ok(patches, cls_token, dist_token, pos_embed):
        b = patches.shape[0]
        parts = [cls_token.expand(b, -1, -1), patches]
        if dist_token is not None:
            parts.append(dist_token.expand(b, -1, -1))
        return torch.cat(parts, dim=1) + pos_embed

    checks.embed_tokens(ok)
    assert "✓ embed_tokens passed: 3/3" in capsys.readouterr().out

    def dist_first(patches, cls_token, dist_token, pos_embed):
        b = patches.shape[0]
        parts = [cls_token.expand(b, -1, -1)] + ([dist_token.expand(b, -1, -1)] if dist_token is not None else []) + [patches]
        return torch.cat(parts, dim=1) + pos_embed

    fails(checks.embed_tokens, dist_first, "distillation token goes last")
    fails(checks.embed_tokens, lambda p, c, d, pos: ok(p, c, d, pos) - pos, "position embeddings")


def test_embed_tokens_matches_model():
    model = titn_edu.build_model("titn-tiny", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    pixels = model.pixel_embed(images)
    patches = model.patch_embed(pixels, 2)
    _, tokens = model.embed(images)
    expected = torch.cat([model.cls_token.expand(2, -1, -1), patches, model.dist_token.expand(2, -1, -1)], 1) + model.pos_embed
    torch.testing.assert_close(tokens, expected)


def test_block_parameters(capsys):
    def ok(*, outer_dim, inner_dim, num_pixels, mlp_ratio):
        def block(d):
            h = int(d * mlp_ratio)
            return 2 * 2 * d + 3 * d * d + (d * d + d) + (d * h + h) + (h * d + d)

        pc = num_pixels * inner_dim
        return block(inner_dim) + 2 * pc + pc * outer_dim + outer_dim + block(outer_dim)

    checks.block_parameters(ok)
    assert "✓ block_parameters passed: 4/4" in capsys.readouterr().out
    msg = fails(checks.block_parameters, lambda **kw: ok(**kw) - kw["outer_dim"], "you counted", "inner", "patch_residual")
    assert "case 1 of 4" in msg
    fails(checks.block_parameters, lambda **kw: "many", "expected an int")


# ---------------------------------------------------------------------- preprocessing
def _preprocess_ok(name):
    mean = torch.tensor(titn_edu.data.MEAN[name])[:, None, None]
    std = torch.tensor(titn_edu.data.STD[name])[:, None, None]
    pad = 2 if name == "mnist" else 0

    def fn(image):
        x = F.pad(image, (pad, pad, pad, pad)).float() / 255
        return (x - mean) / std

    return fn


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_preprocess_correct(name, capsys):
    checks.preprocess(_preprocess_ok(name), name)
    with unguarded():
        checks.preprocess(titn_edu.get_transforms(name, train=False), name)
    assert capsys.readouterr().out.count(f"✓ preprocess[{name}] passed: 5/5") == 2


def test_preprocess_mistakes():
    mean, std = titn_edu.data.MEAN["mnist"][0], titn_edu.data.STD["mnist"][0]
    fails(lambda f: checks.preprocess(f, "mnist"), lambda im: (im.float() / 255 - mean) / std, "shape (1, 28, 28)", "pad them")
    fails(lambda f: checks.preprocess(f, "mnist"), lambda im: F.pad((im.float() / 255 - mean) / std, (2, 2, 2, 2)),
          "pad before normalising")
    fails(lambda f: checks.preprocess(f, "mnist"), lambda im: (F.pad(im, (2, 2, 2, 2)).float() - mean) / std, "divide by 255")
    cifar_ok = _preprocess_ok("cifar10")
    # CIFAR-10's statistics are close to, but not, CIFAR-100's: caught on the first image.
    fails(lambda f: checks.preprocess(f, "cifar100"), cifar_ok, "preprocess[cifar100] check failed on case 1 of 5",
          "max abs error")
    fails(lambda f: checks.preprocess(f, "cifar10"), lambda im: im.float() / 255, "normalise with the dataset's mean and std")
    with pytest.raises(ValueError, match="dataset must be one of"):
        checks.preprocess(cifar_ok, "imagenet")
