"""Attention (eq. 1–3): by hand, against PyTorch, fused vs explicit, and captured weights."""

import math

import pytest
import torch
from torch import nn

import titn_edu
from titn_edu.attention import MultiHeadAttention, scaled_dot_product_attention


def test_eq1_matches_a_hand_computation():
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 3)
    out, weights = scaled_dot_product_attention(q, k, v)
    # eq. 1, one row at a time with plain Python sums
    for i in range(5):
        scores = [float(q[i] @ k[j]) / math.sqrt(4) for j in range(7)]
        m = max(scores)
        exp = [math.exp(s - m) for s in scores]
        w = [e / sum(exp) for e in exp]
        assert weights[i].tolist() == pytest.approx(w, abs=1e-6)
        expected = [sum(w[j] * float(v[j, c]) for j in range(7)) for c in range(3)]
        assert out[i].tolist() == pytest.approx(expected, abs=1e-5)


def test_eq1_equals_torch_sdpa_and_rows_sum_to_one():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 9))


def test_mask_blocks_positions():
    q = k = v = torch.randn(1, 4, 2)
    mask = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    _, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.all(weights[0][~mask] == 0)


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_multi_head_equals_torch_multihead_attention(heads):
    torch.manual_seed(2)
    dim = 24
    ours = MultiHeadAttention(dim, heads, qkv_bias=True)
    ref = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 10, dim)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_fused_and_explicit_paths_agree_with_gradients():
    torch.manual_seed(3)
    attn = MultiHeadAttention(32, 4)
    x = torch.randn(2, 11, 32, requires_grad=True)
    out_fused = attn(x)
    (g_fused,) = torch.autograd.grad(out_fused.square().sum(), x)
    attn.fused = False
    out_explicit = attn(x)
    (g_explicit,) = torch.autograd.grad(out_explicit.square().sum(), x)
    torch.testing.assert_close(out_fused, out_explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fused, g_explicit, atol=1e-5, rtol=1e-5)


def test_capture_attention_records_inner_and_outer_maps_and_restores():
    torch.manual_seed(4)
    model = titn_edu.build_model("titn-tiny", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    with titn_edu.capture_attention(model) as maps:
        inside = model(x)
    after = model(x)
    depth, heads_out, heads_in = model.config["depth"], model.config["outer_heads"], model.config["inner_heads"]
    assert len(maps.outer) == depth and len(maps.inner) == depth
    assert maps.outer[0].shape == (2, heads_out, model.num_tokens, model.num_tokens)
    assert maps.inner[0].shape == (2 * model.num_patches, heads_in, model.num_pixels, model.num_pixels)
    assert [r.layer for r in maps.records if r.stream == "outer"] == list(range(depth))
    for w in maps.outer + maps.inner:
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    torch.testing.assert_close(before, inside, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(before, after)
    assert all(m.recorder is None and m.fused for m in model.modules() if isinstance(m, MultiHeadAttention))
    # nothing is recorded once the context has closed
    model(x)
    assert len(maps) == 2 * depth


def test_capture_restores_on_error():
    model = titn_edu.build_model("vit-tiny", num_classes=10)
    with pytest.raises(RuntimeError):
        with titn_edu.capture_attention(model):
            raise RuntimeError("boom")
    assert all(m.recorder is None for m in model.modules() if isinstance(m, MultiHeadAttention))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: MultiHeadAttention(10, 3), "not divisible by num_heads=3"),
        (lambda: scaled_dot_product_attention(torch.randn(2, 4), torch.randn(2, 5), torch.randn(2, 5)), "d_k"),
        (lambda: scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 4), torch.randn(2, 4)), "same number of tokens"),
        (lambda: titn_edu.capture_attention(nn.Linear(2, 2)).__enter__(), "no titn_edu.attention.MultiHeadAttention"),
    ],
)
def test_attention_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
