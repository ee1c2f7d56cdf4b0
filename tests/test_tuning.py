"""The kernel timing of ``titn_edu.tuning``: it picks the faster candidate, once per key, and stays out of the way."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from titn_edu import MultiHeadAttention, attention, tuning


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(tuning, "enabled", True)
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

    return {"slow": slow, "fast": fast, "broken": broken}


def test_fastest_picks_the_faster_candidate_once_per_key():
    calls = []
    assert tuning.fastest("k", lambda: _candidates(calls), default="slow") == "fast"
    assert calls.count("slow") == 4 and calls.count("fast") == 4  # one warm-up + three timed runs each
    assert calls.count("broken") == 1  # a failing candidate is dropped at once, never chosen
    calls.clear()
    assert tuning.fastest("k", lambda: _candidates(calls), default="slow") == "fast"
    assert calls == []  # remembered: not timed again
    assert tuning.choices() == {"k": "fast"}


def test_fastest_returns_the_default_when_timing_is_off_or_unsafe(monkeypatch):
    calls = []
    monkeypatch.setattr(tuning, "enabled", False)
    assert tuning.fastest("k", lambda: _candidates(calls), default="slow") == "slow"
    monkeypatch.setattr(tuning, "enabled", True)
    with FlopCounterMode(display=False):
        assert tuning.fastest("k", lambda: _candidates(calls), default="slow") == "slow"
    x = torch.ones(2, requires_grad=True)
    with torch.autograd.graph.save_on_cpu():
        assert not tuning.can_time()
        assert tuning.fastest("k", lambda: _candidates(calls), default="slow") == "slow"
    assert calls == [] and tuning.choices() == {}
    assert x.grad is None


def test_fastest_rejects_a_default_that_is_not_a_candidate():
    with pytest.raises(ValueError, match="not one of the candidates"):
        tuning.fastest("k", lambda: _candidates([]), default="missing")


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
    assert tuning.choices() == {key: tuning.choices()[key]}
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
    assert tuning.choices() == {}
