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

import titn_edu.linear as fast_linear
from titn_edu.attention import KERNELS
from titn_edu import Linear, MultiHeadAttention, TransformerBlock, build_model, capture_attention, pixelify, set_fast_path

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
    [((2, 16, 12), 2), ((3, 18, 64), 4), ((1, 1, 8), 1), ((4, 5, 6), 3),  # small heads, short: transposed products
     ((2, 18, 192), 3),  # larger heads, short: per-head matmuls with autograd's backward
     ((1, 300, 12), 2), ((2, 150, 12), 2)],  # long sequences: the fused kernel
)
def test_multi_head_attention_paths_agree_with_gradients(shape, heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(shape[-1], heads)
    fast, reference = fused_and_reference(mha, torch.randn(*shape), [mha.qkv.weight, mha.proj.weight])
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("shape,heads", [((3, 16, 12), 2), ((2, 18, 192), 3), ((1, 5, 6), 3), ((1, 140, 12), 2)])
def test_every_attention_kernel_agrees_with_eq1_with_gradients(kernel, shape, heads):
    """Whatever the timing picks on a given machine, each candidate computes eq. 1–2."""
    torch.manual_seed(1)
    mha = MultiHeadAttention(shape[-1], heads)
    mha.kernel = kernel
    fast, reference = fused_and_reference(mha, torch.randn(*shape), [mha.qkv.weight, mha.proj.weight])
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_model_with_each_attention_kernel_matches_reference(kernel, training):
    torch.manual_seed(0)
    model = build_model("titn-tiny", num_classes=5).train(training)
    images = torch.randn(3, 3, 32, 32)
    reference = run(set_fast_path(model, False), images)
    set_fast_path(model, True)
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.kernel = kernel
    assert_same(run(model, images), reference)


def test_attention_kernel_rejects_unknown_names():
    mha = MultiHeadAttention(12, 2)
    assert mha.kernel == "auto"
    with pytest.raises(ValueError, match="'auto' or one of"):
        mha.kernel = "flash"
    assert mha.kernel == "auto"


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
    assert maps.outer[-1].shape == maps.outer[0].shape  # the last block is not pruned while recording
    assert all(m._recorder is None and m.fused for m in model.modules() if isinstance(m, MultiHeadAttention))


# ------------------------------------------------------------------------ compilability
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_graph_breaks(training):
    torch._dynamo.reset()
    model = build_model("titn-tiny", num_classes=3, depth=2).train(training)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


# ------------------------------------------------------------------ every fast path at once
def test_set_fast_path_switches_every_fast_path():
    model = build_model("titn-tiny", num_classes=6)
    fast_modules = [m for m in model.modules() if isinstance(m, (Linear, MultiHeadAttention))]
    assert set_fast_path(model, False) is model
    assert not model.prune_last_block and not any(m.fused for m in fast_modules)
    set_fast_path(model, True)
    assert model.prune_last_block and all(m.fused for m in fast_modules)


def test_set_fast_path_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        set_fast_path("titn", True)
    with pytest.raises(TypeError, match="True or False"):
        set_fast_path(build_model("vit-tiny", num_classes=2), "off")


# ------------------------------------------------------------------ last-block pruning
@pytest.mark.parametrize("name,rows", [("titn-tiny", 2), ("deit-tiny", 2), ("tnt-tiny", 1), ("vit-tiny", 1)])
def test_last_block_computes_only_the_head_tokens(name, rows):
    torch.manual_seed(5)
    model = build_model(name, num_classes=4).train()
    seen = []
    model.blocks[-1].outer.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    model.blocks[0].outer.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [model.num_tokens, rows]  # first block: every token; last block: the heads' tokens
    seen.clear()
    model.forward_features(torch.randn(2, 3, 32, 32))  # the public token output is never pruned
    assert seen == [model.num_tokens, model.num_tokens]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_pruned_forward_equals_full_forward(training):
    torch.manual_seed(6)
    model = build_model("titn", num_classes=10, depth=2).train(training)
    images = torch.randn(4, 3, 32, 32)
    pruned = run(model, images)
    model.prune_last_block = False
    assert_same(pruned, run(model, images))


def test_attention_rows_equal_the_same_rows_of_the_full_output():
    torch.manual_seed(7)
    block = TransformerBlock(dim=24, num_heads=3)
    x = torch.randn(2, 9, 24)
    for rows in ([0, 8], slice(0, 1), [3]):
        for fused in (True, False):
            block.attn.fused = fused
            torch.testing.assert_close(block(x, rows=rows), block(x)[:, rows], atol=1e-6, rtol=1e-5)


def test_a_swapped_last_block_is_run_whole():
    """Coursework swaps modules in; a replacement without ``rows`` must still work."""

    class Plain(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return self.block(x)

    torch.manual_seed(8)
    model = build_model("titn-tiny", num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        model.blocks[-1].outer = Plain(model.blocks[-1].outer)
        torch.testing.assert_close(model(images), before, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------ the fast Linear
needs_onednn = pytest.mark.skipif(not fast_linear.onednn_linear_available(), reason="PyTorch built without oneDNN")


@pytest.fixture
def onednn_calls(monkeypatch):
    """Count calls of the oneDNN kernel (and still run it)."""
    calls = []
    real = fast_linear._ONEDNN_LINEAR
    if real is not None:
        monkeypatch.setattr(fast_linear, "_ONEDNN_LINEAR", lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


def use_linear_kernel(model: torch.nn.Module, name: str) -> None:
    for m in model.modules():
        if isinstance(m, Linear):
            m.kernel = name


@needs_onednn
@pytest.mark.parametrize("kernel", fast_linear.LINEAR_KERNELS)
@pytest.mark.parametrize("shape,out_features,bias", [((7, 12), 36, True), ((2, 16, 12), 48, False), ((3, 2, 5, 192), 1, True)])
def test_linear_fast_path_matches_functional_linear_with_gradients(shape, out_features, bias, kernel, onednn_calls):
    torch.manual_seed(9)
    layer = Linear(shape[-1], out_features, bias=bias)
    layer.kernel = kernel
    fast, reference = fused_and_reference(layer, torch.randn(*shape), [p for p in (layer.weight, layer.bias) if p is not None])
    # oneDNN: forward and input gradient with fused = True; BLAS, or fused = False: never.
    assert len(onednn_calls) == (2 if kernel == "onednn" else 0)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_kernel_names_are_checked():
    layer = Linear(4, 3)
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        layer.kernel = "mkl"
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        fast_linear.linear(torch.randn(2, 4), layer.weight, kernel="fast")
    assert layer.kernel == "auto"


@needs_onednn
def test_linear_fast_path_is_taken_in_the_model_and_counted_flops_are_unchanged(onednn_calls):
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("titn-tiny", num_classes=3).eval()
    use_linear_kernel(model, "onednn")  # "auto" may find BLAS faster for some shapes
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
    assert onednn_calls, "the model never took the oneDNN path"
    counts = []
    for enabled in (True, False):
        set_fast_path(model, enabled)
        onednn_calls.clear()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.prune_last_block = False  # compare the same work
            model(images)
        assert not onednn_calls  # under a dispatch mode the counted (functional) path runs
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@needs_onednn
def test_linear_falls_back_where_the_fast_path_does_not_apply(onednn_calls):
    layer = Linear(8, 4)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast still applies
    assert layer.double()(x.double()).dtype == torch.float64
    layer.float()
    per_sample = torch.func.vmap(lambda row: layer(row.unsqueeze(0)))(x)
    torch.testing.assert_close(per_sample.squeeze(1), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not onednn_calls
    compiled = torch.compile(layer, backend="eager")
    torch.testing.assert_close(compiled(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not onednn_calls


@needs_onednn
def test_linear_fast_path_supports_double_backward():
    torch.manual_seed(10)
    layer = Linear(6, 5)
    x = torch.randn(4, 6, requires_grad=True)
    grads = []
    for fused in (True, False):
        layer.fused = fused
        (g,) = torch.autograd.grad(torch.tanh(layer(x)).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        grads.append((g.detach(), gg))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_is_a_drop_in_nn_linear():
    ours, theirs = Linear(5, 3), torch.nn.Linear(5, 3)
    assert isinstance(ours, torch.nn.Linear) and repr(ours) == repr(theirs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5)
    torch.testing.assert_close(ours(x), theirs(x))


@needs_onednn
def test_mlp_fuses_gelu_in_inference_only(onednn_calls):
    from titn_edu import Mlp

    torch.manual_seed(11)
    mlp = Mlp(12, 48)
    use_linear_kernel(mlp, "onednn")
    x = torch.randn(2, 16, 12)
    with torch.no_grad():
        hidden = torch.nn.functional.gelu(torch.nn.functional.linear(x, mlp.fc1.weight, mlp.fc1.bias))
        reference = torch.nn.functional.linear(hidden, mlp.fc2.weight, mlp.fc2.bias)
        fused = mlp(x)
    assert len(onednn_calls) == 2  # fc1 + GELU in one call, then fc2
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)
    onednn_calls.clear()
    seen = []
    mlp.act.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), reference, atol=1e-6, rtol=1e-5)
    assert seen == [(2, 16, 48)]  # a hook on the activation sees it run


def test_small_head_attention_refuses_double_backward_and_the_reference_path_gives_it():
    torch.manual_seed(12)
    mha = MultiHeadAttention(12, 2)
    mha.kernel = "transposed"
    x = torch.randn(2, 16, 12, requires_grad=True)
    (g,) = torch.autograd.grad(mha(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        g.sum().backward()
    mha.fused = False
    (g,) = torch.autograd.grad(mha(x).pow(2).sum(), x, create_graph=True)
    g.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
