"""The TITN model: shapes after each component, outputs per mode, gradients, presets, errors."""

import pytest
import torch

import titn_edu
from titn_edu import TITN, build_model, count_parameters
from titn_edu.blocks import TITNBlock, TransformerBlock
from titn_edu.embeddings import PatchEmbed, PixelEmbed, PixelToPatch, patchify, pixelify

B = 2


def test_shapes_after_each_component():
    """d2l-style: one shape check per component, in the order of the paper's Fig. 2."""
    torch.manual_seed(0)
    x = torch.randn(B, 3, 32, 32)
    assert patchify(x, 8).shape == (B, 16, 8 * 8 * 3)
    assert pixelify(x, 8, 2).shape == (B, 16, 16, 2 * 2 * 3)
    pixels = PixelEmbed(patch_size=8, pixel_size=2, in_chans=3, dim=12)(x)
    assert pixels.shape == (B * 16, 16, 12)
    patches = PixelToPatch(num_pixels=16, inner_dim=12, outer_dim=192)(pixels, B)
    assert patches.shape == (B, 16, 192)
    assert PatchEmbed(patch_size=8, in_chans=3, dim=192)(x).shape == (B, 16, 192)
    tokens = torch.randn(B, 18, 192)
    assert TransformerBlock(dim=192, num_heads=3)(tokens).shape == (B, 18, 192)
    block = TITNBlock(outer_dim=192, inner_dim=12, num_pixels=16, outer_heads=3, inner_heads=2)
    new_pixels, new_tokens = block(pixels, tokens)
    assert new_pixels.shape == pixels.shape and new_tokens.shape == tokens.shape
    model = build_model("titn", num_classes=100)
    assert model.forward_features(x).shape == (B, 18, 192)


def test_patchify_order_is_row_major_and_channel_last():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    p = patchify(img, 2)
    # second patch (top-right) holds rows 0-1, columns 2-3; values ordered (row, col, channel)
    assert p[0, 1].tolist() == [2.0, 18.0, 3.0, 19.0, 6.0, 22.0, 7.0, 23.0]
    px = pixelify(img, 4, 2)
    assert px.shape == (1, 1, 4, 8)
    torch.testing.assert_close(px[0, 0], patchify(img, 2)[0])


def test_patch_residual_adds_zero_rows_to_class_and_distillation_tokens():
    torch.manual_seed(1)
    block = TITNBlock(outer_dim=16, inner_dim=4, num_pixels=4, outer_heads=2, inner_heads=2)
    block.outer = torch.nn.Identity()  # isolate the patch residual
    pixels, tokens = torch.randn(B * 3, 4, 4), torch.randn(B, 5, 16)
    _, out = block(pixels, tokens)
    torch.testing.assert_close(out[:, 0], tokens[:, 0])
    torch.testing.assert_close(out[:, -1], tokens[:, -1])
    assert not torch.allclose(out[:, 1:-1], tokens[:, 1:-1])


def test_output_modes():
    torch.manual_seed(2)
    x = torch.randn(B, 3, 32, 32)
    model = build_model("titn-tiny", num_classes=7)
    cls_logits, dist_logits = model.train()(x)  # pair in train mode (drop_path = 0: deterministic)
    assert cls_logits.shape == dist_logits.shape == (B, 7)
    torch.testing.assert_close(model.eval()(x), (cls_logits + dist_logits) / 2)
    tnt = build_model("tnt-tiny", num_classes=7)
    assert tnt.train()(x).shape == (B, 7) and tnt.eval()(x).shape == (B, 7)


def test_distillation_token_drives_the_distillation_head():
    torch.manual_seed(3)
    x = torch.randn(B, 3, 32, 32)
    model = build_model("titn-tiny", num_classes=5).train()
    cls_a, dist_a = model(x)
    with torch.no_grad():
        model.dist_token.add_(torch.randn_like(model.dist_token))
    cls_b, dist_b = model(x)
    assert not torch.allclose(dist_a, dist_b)
    assert not torch.allclose(cls_a, cls_b)  # the tokens interact through attention


@pytest.mark.parametrize("name", titn_edu.list_models())
def test_every_preset_builds_runs_and_gets_gradients(name):
    torch.manual_seed(4)
    in_chans = 1 if name.endswith("tiny") else 3
    model = build_model(name, num_classes=10, in_chans=in_chans).train()
    out = model(torch.randn(B, in_chans, 32, 32))
    logits = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
    logits.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a gradient: {missing}"


def test_variant_switches():
    vit, deit, tnt, titn = (build_model(n, num_classes=10) for n in ("vit", "deit", "tnt", "titn"))
    assert (vit.inner, vit.distill) == (False, False) and vit.pixel_embed is None and vit.num_tokens == 17
    assert (deit.inner, deit.distill) == (False, True) and deit.num_tokens == 18
    assert (tnt.inner, tnt.distill) == (True, False) and tnt.dist_token is None
    assert (titn.inner, titn.distill) == (True, True) and titn.num_pixels == 16
    large = build_model("titn-large-patch", num_classes=10)
    assert large.num_patches == 4 and large.num_pixels == 16


# Paper, Table 1 (parameters, millions; the models are built for CIFAR-100).
TABLE_1 = {"vit": 5.36, "deit": 5.37, "tnt": 5.83, "titn": 5.85, "titn-large-patch": 5.85}


def test_parameter_counts_match_table_1():
    rows = []
    for name, paper in TABLE_1.items():
        ours = count_parameters(build_model(name, num_classes=100)) / 1e6
        rows.append((name, ours, paper, 100 * (ours - paper) / paper))
    print("\nmodel              ours (M)  paper (M)  diff")
    for name, ours, paper, diff in rows:
        print(f"{name:<18} {ours:8.3f}  {paper:9.2f}  {diff:+.2f} %")
    for name, ours, paper, diff in rows:
        assert abs(diff) <= 2.0, f"{name}: {ours:.3f} M vs the paper's {paper} M ({diff:+.2f} %)"


def test_initialisation():
    torch.manual_seed(5)
    model = build_model("titn", num_classes=100)
    w = model.blocks[0].outer.mlp.fc1.weight
    # a normal of std 0.02 cut at ±2 std has std 0.02 * 0.8796
    assert abs(w.std().item() - 0.0176) < 0.001 and w.abs().max() <= 0.04 + 1e-6
    assert torch.all(model.blocks[0].outer.mlp.fc1.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)
    assert model.cls_token.abs().max() <= 0.04 + 1e-6 and model.cls_token.std() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=10, img_size=30, patch_size=8), "img_size=30 is not divisible by patch_size=8"),
        (dict(num_classes=10, patch_size=8, pixel_size=3), "patch_size=8 is not divisible by pixel_size=3"),
        (dict(num_classes=10, outer_dim=100, outer_heads=3), "outer_dim=100 is not divisible by outer_heads=3"),
        (dict(num_classes=10, inner_dim=10, inner_heads=4), "inner_dim=10 is not divisible by inner_heads=4"),
        (dict(num_classes=0), "num_classes must be an integer >= 1"),
        (dict(num_classes=2.5), "num_classes must be an integer >= 1"),
        (dict(num_classes=10, depth=0), "depth must be a positive integer"),
        (dict(num_classes=10, drop_path=1.0), "drop_path must be in"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TITN(**kwargs)


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        TITN(10)  # noqa


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model name 'swin'.*titn"):
        build_model("swin", num_classes=10)
    with pytest.raises(ValueError, match="unknown model argument"):
        build_model("titn", num_classes=10, widht=3)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(3, 32, 32), "single image: add a batch axis"),
        (torch.randn(2, 32, 32, 3), "channels-last"),
        (torch.randn(2, 1, 32, 32), "in_chans=3"),
        (torch.randn(2, 3, 28, 28), "img_size=32"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), "Convert and normalise"),
    ],
)
def test_bad_input_raises_value_error(x, match):
    model = build_model("titn-tiny", num_classes=10)
    with pytest.raises(ValueError, match=match):
        model(x)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        build_model("titn-tiny", num_classes=10)([[0.0]])
