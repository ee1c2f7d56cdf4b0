"""The fast path computes what the reference path computes: outputs and gradients, train and eval.

Reference paths:

* ``MultiHeadAttention.fused = False``: eq. 1 written out (explicit softmax), as the lesson has it;
* :func:`reference_forward` below: the whole network re-written with plain operations (explicit
  attention, a ``torch.cat`` patch residual, no fused kernels), reading the model's parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from titn_edu import MultiHeadAttention, build_model, capture_attention, pixelify, set_fast_path

PRESETS = ["titn-tiny", "tnt-tiny", "vit-tiny", "deit-tiny"]


def set_fused(model: torch.nn.Module, fused: bool) -> None:
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.fused = fused


def run(model, images, *, seed=0):
    """Forward + backward of a scalar built from every output; returns (outputs, grads by name)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same drop-path masks for both paths
    out = model(images)
    outs = out if isinstance(out, tuple) else (out,)
    weights = [torch.linspace(-1, 1, o.numel()).view_as(o) for o in outs]
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads


def assert_same(a, b, *, atol=1e-5, rtol=1e-4):
    outs_a, grads_a = a
    outs_b, grads_b = b
    assert len(outs_a) == len(outs_b)
    for x, y in zip(outs_a, outs_b):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        scale = grads_b[name].abs().max().clamp_min(1e-3)
        torch.testing.assert_close(grads_a[name] / scale, grads_b[name] / scale, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("name", PRESETS + ["titn-tiny-large-patch"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("switch", ["attention", "all"])
def test_fast_paths_off_give_the_same_model(name, training, switch):
    """``attention``: ``MultiHeadAttention.fused = False`` only; ``all``: ``set_fast_path(model, False)``."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, drop_path=0.1).train(training)
    images = torch.randn(3, 3, 32, 32)
    fast = run(model, images)
    set_fused(model, False) if switch == "attention" else set_fast_path(model, False)
    assert_same(fast, run(model, images))


def test_full_size_titn_fast_path_matches_reference():
    torch.manual_seed(0)
    model = build_model("titn", num_classes=10).train()
    images = torch.randn(2, 3, 32, 32)
    fast = run(model, images)
    set_fused(model, False)
    assert_same(fast, run(model, images))


# ---------------------------------------------------------------- an independent reference
def _ln(x, norm):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _attention(x, mha):
    h = mha.num_heads
    qkv = x @ mha.qkv.weight.T + (mha.qkv.bias if mha.qkv.bias is not None else 0)
    q, k, v = qkv.chunk(3, dim=-1)
    heads = []
    for i in range(h):
        sl = slice(i * mha.head_dim, (i + 1) * mha.head_dim)
        scores = q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(mha.head_dim)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    return torch.cat(heads, dim=-1) @ mha.proj.weight.T + mha.proj.bias


def _block(x, blk):
    x = x + _attention(_ln(x, blk.norm1), blk.attn)
    hidden = F.gelu(_ln(x, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return x + hidden @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def _pixel_to_patch(pixels, mod, batch):
    flat = pixels.reshape(batch, -1, pixels.shape[1] * pixels.shape[2])
    return _ln(flat, mod.norm) @ mod.proj.weight.T + mod.proj.bias


def reference_forward(model, images):
    """TITN/TNT/ViT/DeiT forward with plain operations only (no drop path)."""
    b = images.shape[0]
    if model.pixel_embed is not None:
        pe = model.pixel_embed
        pixels = pixelify(images, pe.patch_size, pe.pixel_size).flatten(0, 1)  # (B·N, P, m·m·C)
        pixels = pixels @ pe.proj.weight.T + pe.proj.bias + pe.pixel_pos
        patches = _pixel_to_patch(pixels, model.patch_embed, b)
    else:
        pixels = None
        flat = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=model.patch_embed.patch_size,
                         p2=model.patch_embed.patch_size)
        patches = flat @ model.patch_embed.proj.weight.T + model.patch_embed.proj.bias
    parts = [model.cls_token.expand(b, -1, -1), patches]
    if model.dist_token is not None:
        parts.append(model.dist_token.expand(b, -1, -1))
    tokens = torch.cat(parts, dim=1) + model.pos_embed
    for blk in model.blocks:
        if blk.inner is not None:
            pixels = _block(pixels, blk.inner)
            residual = _pixel_to_patch(pixels, blk.patch_residual, b)
            middle = tokens[:, blk.num_prefix: tokens.shape[1] - blk.num_suffix] + residual
            tokens = torch.cat([tokens[:, :blk.num_prefix], middle, tokens[:, tokens.shape[1] - blk.num_suffix:]], 1)
        tokens = _block(tokens, blk.outer)
    tokens = _ln(tokens, model.norm)
    logits = tokens[:, 0] @ model.head.weight.T + model.head.bias
    if model.head_dist is None:
        return logits
    logits_dist = tokens[:, -1] @ model.head_dist.weight.T + model.head_dist.bias
    return (logits, logits_dist) if model.training else (logits + logits_dist) / 2


class _Reference(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return reference_forward(self.model, images)


@pytest.mark.parametrize("name", PRESETS + ["titn-tiny-large-patch"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_model_equals_plain_reference(name, training):
    torch.manual_seed(1)
    model = build_model(name, num_classes=5).train(training)
    images = torch.randn(2, 3, 32, 32)
    fast = run(model, images)
    reference = run(_Reference(model).train(training), images)
    reference = (reference[0], {k.removeprefix("model."): v for k, v in reference[1].items()})
    assert_same(fast, reference)


# --------------------------------------------------------------------- attention unit
def fused_and_reference(module, x, params):
    """Forward + backward with ``module.fused`` True, then False: (output, input grad, *param grads) each."""
    results = []
    for fused in (True, False):
        module.fused = fused
        xi = x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        out = module(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad) + tuple(p.grad.clone() for p in params))
    return results


@pytest.mark.parametrize(
    "shape,heads",
    [((2, 16, 12), 2), ((3, 18, 64), 4), ((1, 1, 8), 1), ((4, 5, 6), 3), ((2, 18, 192), 3), ((1, 300, 12), 2)],
)
def test_multi_head_attention_paths_agree_with_gradients(shape, heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(shape[-1], heads)
    fast, reference = fused_and_reference(mha, torch.randn(*shape), [mha.qkv.weight, mha.proj.weight])
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_multi_head_attention_rejects_wrong_shape():
    mha = MultiHeadAttention(12, 2)
    with pytest.raises(ValueError, match=r"\(batch, tokens, 12\)"):
        mha(torch.randn(2, 16, 8))
    with pytest.raises(ValueError, match="shape"):
        mha(torch.randn(16, 12))


def test_capture_still_sees_the_same_outputs_and_restores_the_fast_path():
    torch.manual_seed(0)
    model = build_model("titn-tiny", num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        with capture_attention(model) as maps:
            during = model(images)
        after = model(images)
    torch.testing.assert_close(before, during, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    depth = model.config["depth"]
    assert len(maps.outer) == depth and len(maps.inner) == depth
    assert maps.outer[0].shape == (2, model.config["outer_heads"], model.num_tokens, model.num_tokens)
    assert all(m.recorder is None and m.fused for m in model.modules() if isinstance(m, MultiHeadAttention))


# ------------------------------------------------------------------------ compilability
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_graph_breaks(training):
    torch._dynamo.reset()
    model = build_model("titn-tiny", num_classes=3, depth=2).train(training)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


# ------------------------------------------------------------------ the one switch
def test_set_fast_path_switches_every_attention():
    model = build_model("titn-tiny", num_classes=6)
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(attentions) == 2 * model.config["depth"]
    assert set_fast_path(model, False) is model
    assert not any(m.fused for m in attentions)
    set_fast_path(model, True)
    assert all(m.fused for m in attentions)


def test_set_fast_path_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        set_fast_path("titn", True)
    with pytest.raises(TypeError, match="True or False"):
        set_fast_path(build_model("vit-tiny", num_classes=2), "off")


def test_second_derivatives_come_from_the_written_out_path():
    """PyTorch's fused CPU kernel has first derivatives only; eq. 1 written out has all of them."""
    torch.manual_seed(12)
    mha = MultiHeadAttention(12, 2).double()
    x = torch.randn(2, 16, 12, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(mha(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative"):
        g.sum().backward()
    mha.fused = False
    assert torch.autograd.gradgradcheck(lambda t: mha(t).pow(2).sum(), (x,))


def test_model_path_uses_plain_pytorch_layers():
    """The reference core is plain PyTorch: nn.Linear everywhere, and no block is accelerated by default."""
    model = build_model("titn-tiny", num_classes=4)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)
    assert all(m.accelerator is None for m in model.modules() if hasattr(m, "accelerator"))
