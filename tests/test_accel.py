"""The optional accelerator (titn_edu.accel): same results as the PyTorch model, opt-in, and safe to load.

Each numerical check runs a block or a model twice, with the compiled inner-block kernel and on
PyTorch operators, and compares outputs and every gradient. The kernel's exp and normal CDF are
approximations, so agreement is to float32 rounding, not bitwise.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from titn_edu import TransformerBlock, build_model, capture_attention, set_fast_path
from titn_edu import accel
from titn_edu.accel import build


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The kernel, built once for this module into a private temporary cache folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TITN_EDU_CACHE_DIR", str(tmp_path_factory.mktemp("accel-cache")))
    accel._state.clear()
    found = accel._kernel()
    if found is None:
        patch.undo()
        pytest.skip(f"the kernel cannot be had here: {accel._state.get('failure')}")
    yield found
    patch.undo()
    accel._state.clear()


def _pair(kernel, dim=12, heads=2, mlp_ratio=4.0, drop_path=0.0, seed=0):
    torch.manual_seed(seed)
    fast = TransformerBlock(dim=dim, num_heads=heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
    with torch.no_grad():  # weights far from the initial ones, so every term matters
        for p in fast.parameters():
            p.normal_(0.0, 0.3)
    ref = copy.deepcopy(fast)
    fast.accelerator = kernel
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


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dim,heads,mlp_ratio", [(12, 2, 4.0), (8, 2, 2.0), (12, 3, 4.0), (16, 4, 1.5)])
def test_kernel_matches_pytorch_outputs_and_gradients(kernel, dim, heads, mlp_ratio):
    fast, ref = _pair(kernel, dim, heads, mlp_ratio)
    assert kernel.applies(fast, torch.zeros(3, 16, dim))
    x, grad = torch.randn(300, 16, dim), torch.randn(300, 16, dim)
    out_f, gx_f, gp_f = _run(fast, x, grad)
    out_r, gx_r, gp_r = _run(ref, x, grad)
    _close(out_f, out_r)
    _close(gx_f, gx_r)
    assert gp_f.keys() == gp_r.keys()
    for name in gp_r:
        _close(gp_f[name], gp_r[name])


def test_the_kernel_really_runs_and_a_wrong_result_would_show(kernel, monkeypatch):
    """Guard against comparing PyTorch with itself: the block's output is the kernel's."""
    fast, ref = _pair(kernel)
    calls = []
    real = type(kernel).__call__
    monkeypatch.setattr(type(kernel), "__call__", lambda self, b, t: calls.append(1) or real(self, b, t) + 1e-3)
    x = torch.randn(64, 16, 12)
    with torch.no_grad():
        diff = (fast(x) - ref(x)).abs().max()
    assert calls and diff > 5e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_drop_path_masks_and_threads(kernel, threads):
    """Training with drop path draws the same masks as DropPath; any thread count gives the same result."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast, ref = _pair(kernel, drop_path=0.4)
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
    finally:
        torch.set_num_threads(old)


def test_accelerated_model_trains_like_the_plain_one_and_keeps_its_state_dict(kernel):
    torch.manual_seed(0)
    plain = build_model("titn-tiny", num_classes=10, drop_path=0.1)
    fast = accel.accelerate(copy.deepcopy(plain))
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert [b.inner.accelerator is kernel for b in fast.blocks] == [True] * len(fast.blocks)
    images = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        fast.train(train), plain.train(train)
        outs = []
        for model in (fast, plain):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(3)
            out = model(images)
            out = out if isinstance(out, torch.Tensor) else sum(o * (i + 1) for i, o in enumerate(out))
            out.square().mean().backward()
            outs.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
        _close(outs[0][0], outs[1][0])
        for name, g in outs[1][1].items():
            _close(outs[0][1][name], g)
    assert accel.accelerate(fast, False) is fast
    assert all(b.inner.accelerator is None for b in fast.blocks)


# ----------------------------------------------------------------------- where it stands aside
def test_stands_aside_where_it_does_not_apply(kernel):
    fast, _ = _pair(kernel)
    x = torch.randn(8, 16, 12)
    assert kernel.applies(fast, x)
    assert not kernel.applies(fast, x.double())
    assert not kernel.applies(fast, torch.randn(8, 9, 12))  # 9 pixel tokens: the kernel handles 16
    assert not kernel.applies(fast, torch.randn(0, 16, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernel.applies(fast, x)
    handle = fast.mlp.fc1.register_forward_hook(lambda *a: None)
    assert not kernel.applies(fast, x)
    handle.remove()
    fast.attn.fused = False  # the reference path asked for: eq. 1 written out
    assert not kernel.applies(fast, x)
    fast.attn.fused = True
    fast.mlp.act = torch.nn.GELU(approximate="tanh")  # not the block the kernel computes
    assert not kernel.applies(fast, x)


def test_set_fast_path_false_is_still_the_reference_path(kernel, monkeypatch):
    calls = []
    real = type(kernel).__call__
    monkeypatch.setattr(type(kernel), "__call__", lambda self, b, t: calls.append(b) or real(self, b, t))
    model = accel.accelerate(build_model("titn-tiny", num_classes=10).eval())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
        assert len(calls) == len(model.blocks)  # every inner block, none of the outer ones
        calls.clear()
        set_fast_path(model, False)
        model(images)
        assert not calls
        set_fast_path(model, True)
        model(images)
        assert len(calls) == len(model.blocks)


def test_capture_attention_still_sees_inner_maps(kernel):
    model = accel.accelerate(build_model("titn-tiny", num_classes=10).eval())
    with capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(maps.inner) == len(model.blocks) and maps.inner[0].shape[-2:] == (16, 16)


def test_flop_counter_counts_the_operators(kernel):
    """Under FlopCounterMode the block runs as operators, so every product is counted."""
    from torch.utils.flop_counter import FlopCounterMode

    fast, ref = _pair(kernel)
    counts = []
    for block in (fast, ref):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            block(torch.randn(32, 16, 12))
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_no_graph_breaks_when_accelerated(kernel):
    torch._dynamo.reset()
    model = accel.accelerate(build_model("titn-tiny", num_classes=3, depth=2))
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


def test_a_copied_model_keeps_its_accelerator(kernel):
    model = accel.accelerate(build_model("titn-tiny", num_classes=3))
    assert copy.deepcopy(model).blocks[0].inner.accelerator is kernel


# ------------------------------------------------------------------- opt-in, nothing implied
def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_importing_and_checking_builds_and_writes_nothing(tmp_path):
    """`import titn_edu`, a model and a coursework check neither import the accelerator nor write a file."""
    home = tmp_path / "home"
    home.mkdir()
    proc = _python("""
        import sys, torch, titn_edu
        model = titn_edu.build_model("titn-tiny", num_classes=3)
        sum(model(torch.randn(2, 3, 32, 32))).sum().backward()
        class Block(torch.nn.Module):  # a student's block: the library's attention and MLP, its own residuals
            def __init__(self, *, dim, num_heads, mlp_ratio=4.0):
                super().__init__()
                self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
                self.attn = titn_edu.MultiHeadAttention(dim, num_heads)
                self.mlp = titn_edu.Mlp(dim, int(dim * mlp_ratio))
            def forward(self, x):
                x = x + self.attn(self.norm1(x))
                return x + self.mlp(self.norm2(x))
        titn_edu.checks.transformer_block(Block)
        print("accel imported:", "titn_edu.accel" in sys.modules)
    """, HOME=str(home), XDG_CACHE_HOME="", TITN_EDU_CACHE_DIR=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "accel imported: False" in proc.stdout
    assert not (tmp_path / "cache").exists() and not any(home.rglob("*"))


ACCELERATE = """
    import warnings, torch
    warnings.simplefilter("always")
    from titn_edu import build_model, accel
    model = accel.accelerate(build_model("titn-tiny", num_classes=3))
    print("accelerated", model.blocks[0].inner.accelerator is not None, "library", accel.library_path())
    print("shape", tuple(model(torch.randn(2, 3, 32, 32))[0].shape))
"""


def test_without_a_compiler_one_warning_and_the_pytorch_path(tmp_path):
    proc = _python(ACCELERATE, CXX=str(tmp_path / "no-such-compiler"), TITN_EDU_CACHE_DIR=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "accelerated False library None" in proc.stdout and "shape (2, 3)" in proc.stdout
    assert proc.stderr.count("RuntimeWarning") == 1 and "no C++ compiler" in proc.stderr
    assert not list((tmp_path / "cache").glob("*.so*"))  # nothing half-written left behind


def test_on_an_unsupported_processor_one_warning_and_nothing_built(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "cpu_supported", lambda: False)
    monkeypatch.setattr(accel, "_state", {})
    monkeypatch.setenv("TITN_EDU_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="not x86-64 with AVX2"):
        model = accel.accelerate(build_model("titn-tiny", num_classes=3))
    assert model.blocks[0].inner.accelerator is None and not list(tmp_path.iterdir())


def test_builds_into_the_cache_folder_once_and_private(tmp_path):
    cache = tmp_path / "cache"
    first = _python(ACCELERATE, TITN_EDU_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    assert "accelerated True" in first.stdout
    built = list(cache.glob("titn_accel-*.so"))
    assert len(built) == 1 and not list(cache.glob("*.tmp"))
    assert cache.stat().st_mode & 0o077 == 0 and built[0].stat().st_mode & 0o022 == 0
    stamp = built[0].stat().st_mtime_ns
    second = _python(ACCELERATE, TITN_EDU_CACHE_DIR=str(cache))
    assert "accelerated True" in second.stdout and built[0].stat().st_mtime_ns == stamp


def test_an_empty_cache_setting_builds_in_a_private_folder_removed_at_exit(tmp_path):
    code = textwrap.dedent(ACCELERATE) + "import os; print('mode', oct(os.stat(accel.library_path().parent).st_mode))"
    proc = _python(code, TITN_EDU_CACHE_DIR="")
    assert proc.returncode == 0, proc.stderr
    assert "mode 0o40700" in proc.stdout
    path = proc.stdout.split("library ")[1].split()[0]
    assert "titn_edu-accel-" in path and not os.path.exists(path)


# ---------------------------------------------------------------- nothing unsafe is loaded
@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A cache folder of this test's own, an empty accelerator state, and a record of every library loaded."""
    monkeypatch.setenv("TITN_EDU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(accel, "_state", {})
    loaded = []
    real = build.ctypes.CDLL
    monkeypatch.setattr(build.ctypes, "CDLL", lambda path, *a, **k: loaded.append(path) or real(path, *a, **k))
    cxx = build.compiler()
    if cxx is None or not build.cpu_supported():
        pytest.skip("the kernel cannot be built here")
    return tmp_path / "cache", build.library_name(cxx), loaded


def test_a_planted_library_is_refused_and_replaced(fresh):
    cache, name, loaded = fresh
    cache.mkdir(mode=0o700)
    (cache / name).write_bytes(b"not what we built")  # planted: no build record beside it
    assert accel.available()
    assert loaded == [str(cache / name)] and (cache / name).read_bytes() != b"not what we built"


def test_a_changed_library_is_refused(fresh):
    cache, name, loaded = fresh
    assert accel.available() and len(loaded) == 1
    with open(cache / name, "ab") as f:
        f.write(b"\0")  # changed after it was built
    with pytest.raises(build.UnsafeLibraryError, match="changed since it was built"):
        build.verify(cache / name)
    accel._state.clear()
    assert accel.available() and len(loaded) == 2  # rebuilt, then loaded
    build.verify(cache / name)


def test_a_folder_others_can_write_is_refused_with_the_fix(fresh):
    cache, _, loaded = fresh
    cache.mkdir()
    os.chmod(cache, 0o777)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = accel.accelerate(build_model("titn-tiny", num_classes=3))
    assert model.blocks[0].inner.accelerator is None and not loaded
    assert len(caught) == 1 and "chmod go-w" in str(caught[0].message)


def test_a_library_of_another_user_is_refused(fresh, monkeypatch):
    cache, name, loaded = fresh
    assert accel.available()
    monkeypatch.setattr(build.os, "getuid", lambda: os.stat(cache).st_uid + 1)
    with pytest.raises(build.UnsafeLibraryError, match="not to you"):
        build.verify(cache / name)
    accel._state.clear()
    assert not accel.available() and len(loaded) == 1
    assert "not to you" in accel._state["failure"]
