"""The fused C++ kernels (titn_edu.native) compute what the PyTorch operators compute.

Each check runs a block, a model or the MLP's bias + GELU twice, on the kernel and on the
reference path (``set_fast_path(..., False)``: explicit attention, ``F.linear``, ``F.gelu``), and
compares outputs and every gradient. The kernels' exp and normal CDF are approximations, so
agreement is to float32 rounding, not bitwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from titn_edu import TransformerBlock, build_model, capture_attention, native, set_fast_path

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler: the kernel cannot be built here")


def _pair(dim=12, heads=2, mlp_ratio=4.0, drop_path=0.0, seed=0):
    torch.manual_seed(seed)
    fast = TransformerBlock(dim=dim, num_heads=heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
    with torch.no_grad():  # weights far from the initial ones, so every term matters
        for p in fast.parameters():
            p.normal_(0.0, 0.3)
    ref = TransformerBlock(dim=dim, num_heads=heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
    ref.load_state_dict(fast.state_dict())
    set_fast_path(ref, False)
    return fast, ref


def _run(block, x, grad, seed=1):
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = block(x)
    out.backward(grad)
    return out.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


def _close(a, b, rtol=1e-5):
    """Equal to float32 rounding, relative to the tensor's scale (gradients sum over many tokens)."""
    scale = b.abs().max().clamp_min(1.0)
    assert (a - b).abs().max() <= rtol * 10 * scale, (a - b).abs().max().item()


@pytest.mark.parametrize("dim,heads,mlp_ratio", [(12, 2, 4.0), (8, 2, 2.0), (12, 3, 4.0), (16, 4, 1.5)])
def test_kernel_matches_reference_outputs_and_gradients(dim, heads, mlp_ratio):
    fast, ref = _pair(dim, heads, mlp_ratio)
    assert native.applies(fast, torch.zeros(3, 16, dim)) and not native.applies(ref, torch.zeros(3, 16, dim))
    x, grad = torch.randn(300, 16, dim), torch.randn(300, 16, dim)
    out_f, gx_f, gp_f = _run(fast, x, grad)
    out_r, gx_r, gp_r = _run(ref, x, grad)
    _close(out_f, out_r)
    _close(gx_f, gx_r)
    assert gp_f.keys() == gp_r.keys()
    for name in gp_r:
        _close(gp_f[name], gp_r[name])


def test_the_kernel_really_runs_and_a_wrong_result_would_show(monkeypatch):
    """Guard against a comparison of the reference with itself: the kernel's output is the block's output."""
    fast, ref = _pair()
    x = torch.randn(64, 16, 12)
    calls = []
    real = native.inner_block
    monkeypatch.setattr(native, "inner_block", lambda b, t: calls.append(1) or real(b, t) + 1e-3)
    with torch.no_grad():
        diff = (fast(x) - ref(x)).abs().max()
    assert calls and diff > 5e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_drop_path_masks_and_threads(threads):
    """Training with drop path draws the same masks as DropPath; any thread count gives the same result."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast, ref = _pair(drop_path=0.4)
        fast.train(), ref.train()
        x, grad = torch.randn(512, 16, 12), torch.randn(512, 16, 12)
        out_f, gx_f, gp_f = _run(fast, x, grad)
        out_r, gx_r, gp_r = _run(ref, x, grad)
        dropped = (out_r - x).abs().amax(dim=(1, 2)) == 0  # patches whose two branches were both dropped
        assert 0 < int(dropped.sum()) < 512
        _close(out_f, out_r)
        _close(gx_f, gx_r)
        for name in gp_r:
            _close(gp_f[name], gp_r[name])
        fast.eval(), ref.eval()
        with torch.no_grad():
            _close(fast(x), ref(x))
    finally:
        torch.set_num_threads(old)


def test_whole_model_train_and_eval_match_reference():
    torch.manual_seed(0)
    fast = build_model("titn-tiny", num_classes=10, drop_path=0.1)
    ref = build_model("titn-tiny", num_classes=10, drop_path=0.1)
    ref.load_state_dict(fast.state_dict())
    set_fast_path(ref, False)
    images = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        fast.train(train), ref.train(train)
        outs = []
        for model in (fast, ref):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(3)
            out = model(images)
            out = out if isinstance(out, torch.Tensor) else sum(o * (i + 1) for i, o in enumerate(out))
            out.square().mean().backward()
            outs.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
        _close(outs[0][0], outs[1][0])
        for name, g in outs[1][1].items():
            _close(outs[0][1][name], g)


def test_falls_back_where_it_does_not_apply():
    fast, _ = _pair()
    x = torch.randn(8, 16, 12)
    assert native.applies(fast, x)
    assert not native.applies(fast, x.double())
    assert not native.applies(fast, torch.randn(8, 9, 12))  # 9 pixel tokens: the kernel handles 16
    assert not native.applies(fast, torch.randn(0, 16, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.applies(fast, x)
    handle = fast.mlp.fc1.register_forward_hook(lambda *a: None)
    assert not native.applies(fast, x)
    handle.remove()
    fast.attn.kernel = "per_head"
    assert not native.applies(fast, x)
    fast.attn.kernel = "auto"
    old = native.enabled
    native.enabled = False
    try:
        assert not native.applies(fast, x)
    finally:
        native.enabled = old
    assert native.applies(fast, x)


def test_capture_attention_still_sees_inner_maps():
    torch.manual_seed(0)
    model = build_model("titn-tiny", num_classes=10).eval()
    with capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(maps.inner) == len(model.blocks) and maps.inner[0].shape[-2:] == (16, 16)


def test_flop_counter_counts_the_operators():
    """Under FlopCounterMode the block runs as operators, so every product is counted."""
    from torch.utils.flop_counter import FlopCounterMode

    fast, ref = _pair()
    x = torch.randn(32, 16, 12)
    counts = []
    for block in (fast, ref):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            block(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


CHECK = """
    import warnings, torch
    warnings.simplefilter("always")
    from titn_edu import TransformerBlock, native
    block = TransformerBlock(dim=12, num_heads=2)
    x = torch.randn(4, 16, 12)
    print("applies", native.applies(block, x), "library", native.library_path() is not None)
    print("shape", tuple(block(x).shape))
"""


def test_without_a_compiler_one_warning_and_the_pytorch_path(tmp_path):
    proc = _python(CHECK, CXX=str(tmp_path / "no-such-compiler"), TITN_EDU_CACHE_DIR=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "applies False library False" in proc.stdout and "shape (4, 16, 12)" in proc.stdout
    assert proc.stderr.count("fused C++ kernels are not available") == 1
    assert "TITN_EDU_NATIVE=0" in proc.stderr
    assert not list((tmp_path / "cache").glob("*.so*"))  # nothing half-written left behind


def test_switched_off_by_environment_builds_nothing(tmp_path):
    proc = _python(CHECK, TITN_EDU_NATIVE="0", TITN_EDU_CACHE_DIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "applies False library False" in proc.stdout and not proc.stderr.strip()
    assert not list(tmp_path.glob("*.so*"))


def test_builds_into_the_cache_folder_once(tmp_path):
    first = _python(CHECK, TITN_EDU_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "applies True library True" in first.stdout
    built = list(tmp_path.glob("titn_kernels-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    second = _python(CHECK, TITN_EDU_CACHE_DIR=str(tmp_path))
    assert "applies True library True" in second.stdout and built[0].stat().st_mtime_ns == stamp


def test_block_switch_and_set_fast_path(monkeypatch):
    calls = []
    real = native.inner_block
    monkeypatch.setattr(native, "inner_block", lambda b, t: calls.append(b) or real(b, t))
    model = build_model("titn-tiny", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
        assert len(calls) == len(model.blocks)  # every inner block, none of the outer ones
        calls.clear()
        model.blocks[0].inner.fused = False
        model(images)
        assert len(calls) == len(model.blocks) - 1 and model.blocks[0].inner not in calls
        calls.clear()
        set_fast_path(model, False)
        model(images)
        assert not calls
        set_fast_path(model, True)
        model(images)
        assert len(calls) == len(model.blocks)


# ------------------------------------------------------------------ bias + GELU
def _bias_gelu_reference(z, bias, grad):
    """Outputs and gradients of ``F.gelu(z + bias)`` in float64, the exact values."""
    z64, b64 = z.double().requires_grad_(), bias.double().requires_grad_()
    out = torch.nn.functional.gelu(z64 + b64)
    gz, gb = torch.autograd.grad(out, (z64, b64), grad.double())
    return out.detach(), gz, gb


@pytest.mark.parametrize("shape", [(300, 768), (7, 37), (2, 5, 19), (130, 8), (65, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_bias_gelu_matches_gelu_of_the_sum(shape, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        z, bias = 2.0 * torch.randn(shape), torch.randn(shape[-1])
        grad = torch.randn(shape)
        zk, bk = z.clone().requires_grad_(), bias.clone().requires_grad_()
        out = native.bias_gelu(zk, bk)
        assert out.grad_fn is not None and type(out.grad_fn).__name__ == "_BiasGeluBackward"
        out.backward(grad)
        ref, ref_gz, ref_gb = _bias_gelu_reference(z, bias, grad)
        assert (out.double() - ref).abs().max() <= 2e-6
        assert (zk.grad.double() - ref_gz).abs().max() <= 4e-6
        _close(bk.grad.double(), ref_gb)
        # PyTorch's own float32 GELU is no closer to the exact values than the kernel, within rounding
        torch_err = (torch.nn.functional.gelu(z + bias).double() - ref).abs().max()
        assert (out.double() - ref).abs().max() <= 4 * torch_err + 1e-6
    finally:
        torch.set_num_threads(old)


def test_bias_gelu_normal_cdf_error_bound():
    """The rational normal CDF (csrc/vmath.h) is within 3e-7 of Phi everywhere, tails included."""
    z = torch.linspace(-12, 12, 240_001)
    out = native.bias_gelu(z.view(-1, 1), torch.zeros(1)).view(-1).double()
    exact = z.double() * 0.5 * (1 + torch.erf(z.double() / 2**0.5))
    keep = z.abs() > 1e-3
    phi_err = ((out - exact)[keep] / z.double()[keep]).abs().max()
    assert phi_err <= 3e-7, phi_err
    assert torch.isfinite(native.bias_gelu(torch.tensor([[-1e30, 1e30, 0.0]]), torch.zeros(3))).all()


def test_bias_gelu_kernel_really_runs():
    """Its approximation differs from PyTorch's in the last bits somewhere: not F.gelu under another name."""
    torch.manual_seed(0)
    z, bias = torch.randn(256, 64), torch.randn(64)
    assert (native.bias_gelu(z, bias) - torch.nn.functional.gelu(z + bias)).abs().max() > 0


def test_bias_gelu_falls_back_and_second_derivatives():
    torch.manual_seed(0)
    z, bias = torch.randn(6, 10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert not native.bias_gelu_applies(z, bias)
    assert torch.equal(native.bias_gelu(z, bias), torch.nn.functional.gelu(z + bias))
    z32, b32 = z.float(), bias.float()
    assert native.bias_gelu_applies(z32, b32) and not native.bias_gelu_applies(z32, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.bias_gelu_applies(z32, b32)
    old = native.enabled
    native.enabled = False
    try:
        assert not native.bias_gelu_applies(z32, b32)
        assert torch.equal(native.bias_gelu(z32, b32), torch.nn.functional.gelu(z32 + b32))
    finally:
        native.enabled = old
    # create_graph=True: the backward pass is differentiable (PyTorch operators)
    zk, bk = z32.clone().requires_grad_(), b32.clone().requires_grad_()
    zr, br = z32.clone().requires_grad_(), b32.clone().requires_grad_()
    (gk,) = torch.autograd.grad(native.bias_gelu(zk, bk).sum(), zk, create_graph=True)
    (gr,) = torch.autograd.grad(torch.nn.functional.gelu(zr + br).sum(), zr, create_graph=True)
    _close(gk, gr)
    _close(torch.autograd.grad(gk.square().sum(), bk)[0], torch.autograd.grad(gr.square().sum(), br)[0])


def test_mlp_takes_bias_gelu_in_training_and_inference_not_on_the_reference_path(monkeypatch):
    from titn_edu import Mlp

    calls = []
    real = native.bias_gelu
    monkeypatch.setattr(native, "bias_gelu", lambda z, b: calls.append(z.shape) or real(z, b))
    torch.manual_seed(0)
    mlp, ref = Mlp(32, 64), Mlp(32, 64)
    ref.load_state_dict(mlp.state_dict())
    set_fast_path(ref, False)
    for m in (mlp, ref):
        m.fc1.kernel = "blas"  # inference would otherwise time oneDNN's fused GELU against it
    x = torch.randn(4, 9, 32, requires_grad=True)
    grad = torch.randn(4, 9, 32)
    outs = []
    for m in (mlp, ref):
        out = m(x)
        outs.append((out.detach(), *torch.autograd.grad(out, (x, *m.parameters()), grad)))
    assert calls == [(4, 9, 64)]
    for a, b in zip(*outs):
        _close(a, b)
    calls.clear()
    with torch.no_grad():
        _close(mlp(x), ref(x))
    assert calls == [(4, 9, 64)]
    calls.clear()
    mlp.fused = False  # fc1 then act, two modules
    _close(mlp(x), ref(x))
    assert not calls and not ref.fused


def test_bias_gelu_benchmark_runs_and_reports_both_passes():
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bias_gelu.py")
    proc = subprocess.run([sys.executable, script, "--rows", "64", "--hidden", "20", "--rounds", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.strip().startswith("forward") and "speed-up" in line for line in lines)
    assert any(line.strip().startswith("backward") and "speed-up" in line for line in lines)
    assert sum("GFLOP/s" in line for line in lines) == 2
