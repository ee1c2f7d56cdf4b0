"""The kernel timing of ``titn_edu.tuning``: it picks the faster candidate, once per key and machine, and stays out of the way."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from titn_edu import Linear, Mlp, MultiHeadAttention, attention, linear, tuning

NAMES = ("slow", "fast", "broken")
needs_onednn = pytest.mark.skipif(not linear.onednn_linear_available(), reason="PyTorch built without oneDNN: nothing to choose")


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "enabled", True)
    monkeypatch.setenv("TITN_EDU_CACHE_DIR", str(tmp_path / "cache"))
    tuning.clear()
    yield
    tuning.clear()


def _candidates(calls):
    def slow():
        calls.append("slow")
        time.sleep(0.004)

    def fast():
        calls.append("fast")

    def broken():
        calls.append("broken")
        raise RuntimeError("not supported here")

    return lambda: {"slow": slow, "fast": fast, "broken": broken}


def test_fastest_picks_the_faster_candidate_once_per_key():
    calls = []
    assert tuning.fastest("k", NAMES, _candidates(calls)) == "fast"
    assert calls.count("slow") == 4 and calls.count("fast") == 4  # one warm-up + three timed runs each
    assert calls.count("broken") == 1  # a failing candidate is dropped at once, never chosen
    calls.clear()
    assert tuning.fastest("k", NAMES, _candidates(calls)) == "fast"
    assert calls == []  # remembered: not timed again
    assert tuning.choices() == {"k": "fast"}


def test_a_choice_is_kept_on_disk_for_the_next_process():
    calls = []
    assert tuning.fastest(("op", (2, 3)), NAMES, _candidates(calls)) == "fast"
    stored = json.loads(tuning.cache_file().read_text())
    (entries,) = stored["machines"].values()  # one machine: this one, with its PyTorch version
    assert entries == {"('op', (2, 3))": "fast"}
    tuning.clear()  # a new process: nothing in memory
    calls.clear()
    assert tuning.fastest(("op", (2, 3)), NAMES, _candidates(calls)) == "fast"
    assert calls == []  # read from the file, not timed
    tuning.clear(disk=True)
    assert not tuning.cache_file().exists()


def test_a_damaged_or_unwritable_cache_is_timed_around(monkeypatch, tmp_path):
    path = tuning.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    calls = []
    assert tuning.fastest("k", NAMES, _candidates(calls)) == "fast" and calls  # timed again
    assert json.loads(path.read_text())["machines"]  # and the file rewritten whole
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TITN_EDU_CACHE_DIR", str(blocker / "sub"))  # a folder that cannot be made
    tuning.clear()
    assert tuning.fastest("k", NAMES, _candidates([])) == "fast"  # kept for the process only
    monkeypatch.setenv("TITN_EDU_CACHE_DIR", "")
    assert tuning.cache_file() is None


def test_a_stored_name_that_is_no_longer_a_candidate_is_timed_again():
    tuning.fastest("k", NAMES, _candidates([]))
    tuning.clear()
    calls = []
    assert tuning.fastest("k", ("slow", "other"), lambda: {"slow": lambda: calls.append(1), "other": lambda: time.sleep(0.004)}) == "slow"
    assert calls


def test_fastest_returns_the_default_when_timing_is_off_or_unsafe(monkeypatch):
    calls = []
    monkeypatch.setattr(tuning, "enabled", False)
    assert tuning.fastest("k", NAMES, _candidates(calls)) == "slow"
    monkeypatch.setattr(tuning, "enabled", True)
    with FlopCounterMode(display=False):
        assert tuning.fastest("k", NAMES, _candidates(calls)) == "slow"
    with torch.autograd.graph.save_on_cpu():
        assert not tuning.can_time()
        assert tuning.fastest("k", NAMES, _candidates(calls)) == "slow"
    assert calls == [] and tuning.choices() == {} and not tuning.cache_file().exists()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_attention_times_its_kernels_per_shape_without_touching_the_random_stream(training):
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 2).train(training)
    x = torch.randn(8, 16, 12, requires_grad=training)
    state = torch.get_rng_state()
    with torch.set_grad_enabled(training):
        out = mha(x)
    assert torch.equal(torch.get_rng_state(), state)
    key = ("attention", (8, 16, 36), 2, torch.float32, torch.get_num_threads(), training)
    assert [k for k in tuning.choices() if k[0] == "attention"] == [key]
    assert tuning.choices()[key] in ("transposed", "per_head", "sdpa")
    mha.fused = False
    torch.testing.assert_close(out, mha(x), atol=1e-5, rtol=1e-4)


def test_attention_takes_the_default_kernel_when_timing_is_off(monkeypatch):
    monkeypatch.setattr(tuning, "enabled", False)
    seen = []
    transposed = attention.KERNELS["transposed"]
    monkeypatch.setitem(attention.KERNELS, "transposed", lambda qkv, h: seen.append(qkv.shape) or transposed(qkv, h))
    MultiHeadAttention(12, 2)(torch.randn(2, 16, 12))
    assert seen == [(2, 16, 36)] and tuning.choices() == {}


def test_long_sequences_and_forced_kernels_are_not_timed():
    MultiHeadAttention(12, 2)(torch.randn(1, 200, 12))  # over 128 tokens: the fused kernel, no timing
    mha = MultiHeadAttention(12, 2)
    mha.kernel = "sdpa"
    mha(torch.randn(2, 16, 12))
    assert [k for k in tuning.choices() if k[0] != "linear"] == []


@needs_onednn
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_linear_times_its_kernels_per_shape_without_touching_the_random_stream(training):
    torch.manual_seed(0)
    layer = Linear(12, 48)
    x = torch.randn(4, 16, 12, requires_grad=training)
    state = torch.get_rng_state()
    with torch.set_grad_enabled(training):
        out = layer(x)
        layer(x)  # the same shape again: no second timing
        layer(x[:2])  # another shape: timed once more
    assert torch.equal(torch.get_rng_state(), state)
    threads = torch.get_num_threads()
    keys = [("linear", 64, (48, 12), True, torch.float32, threads, training, training, None),
            ("linear", 32, (48, 12), True, torch.float32, threads, training, training, None)]
    assert list(tuning.choices()) == keys
    assert all(tuning.choices()[k] in linear.LINEAR_KERNELS for k in keys)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_linear_gelu_times_the_fused_activation_as_its_own_choice():
    torch.manual_seed(0)
    mlp = Mlp(12, 48)
    x = torch.randn(3, 16, 12)
    with torch.no_grad():
        out = mlp(x)
    acts = {k[-1] for k in tuning.choices() if k[0] == "linear"}
    assert acts == {"gelu", None}  # fc1 with its GELU, fc2 plain
    hidden = torch.nn.functional.gelu(torch.nn.functional.linear(x, mlp.fc1.weight, mlp.fc1.bias))
    torch.testing.assert_close(out, torch.nn.functional.linear(hidden, mlp.fc2.weight, mlp.fc2.bias), atol=1e-5, rtol=1e-5)


def test_linear_takes_onednn_when_timing_is_off_and_a_named_kernel_is_not_timed(monkeypatch):
    seen = []
    monkeypatch.setitem(linear._RUN, "onednn", lambda *a: seen.append("onednn") or linear._blas(*a))
    monkeypatch.setattr(tuning, "enabled", False)
    Linear(12, 48)(torch.randn(2, 12))
    assert seen == (["onednn"] if linear.onednn_linear_available() else []) and tuning.choices() == {}
    monkeypatch.setattr(tuning, "enabled", True)
    layer = Linear(12, 48)
    layer.kernel = "blas"
    layer(torch.randn(2, 12))
    assert tuning.choices() == {} and len(seen) <= 1


def test_attention_flops_are_counted_whatever_kernel_timing_chose(monkeypatch):
    # FlopCounterMode has no formula for the fused kernel's CPU variant; under it the plain products run.
    monkeypatch.setattr(tuning, "fastest", lambda key, names, setup, **kw: "sdpa")
    mha = MultiHeadAttention(12, 2)
    x = torch.randn(2, 16, 12)
    counts = []
    for fused in (True, False):
        mha.fused = fused
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            mha(x)
        counts.append(counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0))
    assert counts[0] == counts[1] == 2 * 2 * (2 * 2 * 16 * 16 * 6)  # QKᵀ and AV, 2 heads, batch 2
