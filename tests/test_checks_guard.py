"""The checkers cannot be fooled, and a student's broken code never crashes them.

* a submission that runs the library's own implementation of its exercise fails with a message that
  says so, however the library is reached (called, renamed, wrapped, subclassed, re-imported);
* a correct independent implementation passes, on the public cases and on the hidden ones (``seed=``);
* code that raises, hangs or returns the wrong type fails its case with a clear message.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import signal
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import titn_edu
from titn_edu import checks, viz
from titn_edu.checks import guard, harness
from titn_edu.losses import TITNLoss

from test_checks import (MHA, BlockStudent, MlpStudent, TITNStudent, _preprocess_ok, attention_ok, fails,  # noqa: E402
                         ln_ok)
from test_checks_part2 import box_ok, loss_ok, rollout_ok  # noqa: E402

DELEGATED = "the library's own version of what this exercise asks you to write"


# ------------------------------------------------------------ independent implementations
def patchify_ok(images, p):
    b, c, h, w = images.shape
    return images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)


def pixelify_ok(images, p, m):
    k = p // m
    return rearrange(images, "b c (h ph m1) (w pw m2) -> b (h w) (ph pw) (m1 m2 c)", ph=k, pw=k, m1=m, m2=m)


def unpatchify_ok(patches, p, height, width, channels):
    return rearrange(patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=height // p, p1=p, p2=p, c=channels)


def mha_parameters_ok(dim, qkv_bias=False):
    return 4 * dim * dim + dim + (3 * dim if qkv_bias else 0)


def _block(d, r):
    h = int(d * r)
    return 4 * d + 4 * d * d + d + 2 * d * h + h + d


def block_parameters_ok(*, outer_dim, inner_dim, num_pixels, mlp_ratio):
    flat = num_pixels * inner_dim
    return _block(inner_dim, mlp_ratio) + 2 * flat + flat * outer_dim + outer_dim + _block(outer_dim, mlp_ratio)


def inner_flops_ok(*, num_patches, num_pixels, inner_dim, mlp_ratio=4.0):
    n, p, c, h = num_patches, num_pixels, inner_dim, int(inner_dim * mlp_ratio)
    return 2 * n * (4 * p * c * c + 2 * p * p * c + 2 * p * c * h)


def model_parameters_ok(*, num_classes, img_size=32, in_chans=3, patch_size=8, pixel_size=2, outer_dim=192,
                        inner_dim=12, depth=12, mlp_ratio=4.0, distill=True, **unused):
    n, p = (img_size // patch_size) ** 2, (patch_size // pixel_size) ** 2
    flat = p * inner_dim
    to_patch = 2 * flat + flat * outer_dim + outer_dim
    pixel_embed = pixel_size ** 2 * in_chans * inner_dim + inner_dim + p * inner_dim
    tokens = (1 + distill) * outer_dim + (n + 1 + distill) * outer_dim
    blocks = depth * (_block(inner_dim, mlp_ratio) + to_patch + _block(outer_dim, mlp_ratio))
    return pixel_embed + to_patch + tokens + blocks + 2 * outer_dim + (1 + distill) * (outer_dim + 1) * num_classes


def embed_tokens_ok(patches, cls_token, dist_token, pos_embed):
    b = patches.shape[0]
    parts = [cls_token.expand(b, -1, -1), patches] + ([dist_token.expand(b, -1, -1)] if dist_token is not None else [])
    return torch.cat(parts, dim=1) + pos_embed


CORRECT = {
    "preprocess": (lambda f, **kw: checks.preprocess(f, "mnist", **kw), _preprocess_ok("mnist")),
    "patchify": (checks.patchify, patchify_ok),
    "pixelify": (checks.pixelify, pixelify_ok),
    "unpatchify": (checks.unpatchify, unpatchify_ok),
    "attention": (functools.partial(checks.attention, mask=True), attention_ok),
    "multi_head_attention": (checks.multi_head_attention, MHA),
    "mha_parameters": (checks.mha_parameters, mha_parameters_ok),
    "layer_norm": (checks.layer_norm, ln_ok),
    "mlp": (checks.mlp, MlpStudent),
    "transformer_block": (checks.transformer_block, BlockStudent),
    "inner_outer_block": (checks.inner_outer_block, TITNStudent),
    "block_parameters": (checks.block_parameters, block_parameters_ok),
    "inner_flops": (checks.inner_flops, inner_flops_ok),
    "embed_tokens": (checks.embed_tokens, embed_tokens_ok),
    "model_parameters": (checks.model_parameters, model_parameters_ok),
    "cutmix_box": (checks.cutmix_box, box_ok),
    "titn_loss": (checks.titn_loss, loss_ok),
    "attention_rollout": (checks.attention_rollout, rollout_ok),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_an_independent_implementation_passes_public_and_hidden_cases(name, capsys):
    check, student = CORRECT[name]
    for seed in (None, 1, 2, 12345):
        check(student) if seed is None else check(student, seed=seed)
    out = capsys.readouterr().out
    assert out.count("✓") == 4 and "passed" in out


def test_hidden_cases_differ_from_the_public_ones_and_from_each_other(capsys):
    # A hard-coded answer to the public cases fails the hidden ones: replay the public outputs by call order.
    public = []

    def recorder(images, p):
        public.append(patchify_ok(images, p))
        return public[-1]

    checks.patchify(recorder)
    answers = iter(public)
    fails(lambda f: checks.patchify(f, seed=7), lambda images, p: next(answers), "patchify check failed on case 1")
    shapes = {s: [] for s in (1, 2)}
    for s in shapes:
        checks.patchify(lambda images, p, s=s: shapes[s].append(tuple(images.shape)) or patchify_ok(images, p), seed=s)
    assert shapes[1] != shapes[2]
    capsys.readouterr()


# ------------------------------------------------------------------ the library's own answer
LIBRARY = [
    ("preprocess", lambda: (lambda f: checks.preprocess(f, "cifar10")), lambda: titn_edu.get_transforms("cifar10", train=False),
     "torchvision.transforms.v2._container.Compose.forward"),
    ("patchify", lambda: checks.patchify, lambda: titn_edu.patchify, "titn_edu.embeddings.patchify"),
    ("pixelify", lambda: checks.pixelify, lambda: titn_edu.pixelify, "titn_edu.embeddings.pixelify"),
    ("pixelify via the library's patchify", lambda: checks.pixelify,
     lambda: lambda x, p, m: rearrange(titn_edu.patchify(rearrange(titn_edu.patchify(x, p), "b n (p1 p2 c) -> (b n) c p1 p2",
                                                                      p1=p, p2=p), m), "(b n) q f -> b n q f", b=x.shape[0]),
     "titn_edu.embeddings.patchify"),
    ("attention", lambda: checks.attention, lambda: titn_edu.scaled_dot_product_attention,
     "titn_edu.attention.scaled_dot_product_attention"),
    ("attention, PyTorch's kernel", lambda: checks.attention,
     lambda: lambda q, k, v: (F.scaled_dot_product_attention(q, k, v), attention_ok(q, k, v)[1]),
     "torch.nn.functional.scaled_dot_product_attention"),
    ("multi_head_attention", lambda: checks.multi_head_attention, lambda: titn_edu.MultiHeadAttention,
     "titn_edu.attention.MultiHeadAttention"),
    ("layer_norm", lambda: checks.layer_norm, lambda: lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps),
     "torch.nn.functional.layer_norm"),
    ("layer_norm, the builtin", lambda: checks.layer_norm,
     lambda: lambda x, w, b, eps=1e-5: torch.layer_norm(x, x.shape[-1:], w, b, eps), "torch.layer_norm"),
    ("mlp", lambda: checks.mlp, lambda: titn_edu.Mlp, "titn_edu.layers.Mlp"),
    ("transformer_block", lambda: checks.transformer_block, lambda: titn_edu.TransformerBlock,
     "titn_edu.blocks.TransformerBlock"),
    ("inner_outer_block", lambda: checks.inner_outer_block, lambda: titn_edu.TITNBlock, "titn_edu.blocks.TITNBlock"),
    ("block_parameters", lambda: checks.block_parameters,
     lambda: lambda **kw: titn_edu.count_parameters(titn_edu.TITNBlock(outer_heads=1, inner_heads=1, **kw)),
     "building a module"),
    ("mha_parameters", lambda: checks.mha_parameters,
     lambda: lambda dim, qkv_bias=False: titn_edu.count_parameters(titn_edu.MultiHeadAttention(dim, 1, qkv_bias=qkv_bias)),
     "building a module"),
    ("model_parameters", lambda: checks.model_parameters,
     lambda: lambda *, num_classes, img_size, in_chans, **preset: titn_edu.count_parameters(
         titn_edu.TITN(num_classes=num_classes, img_size=img_size, in_chans=in_chans, **preset)), "building a module"),
    ("embed_tokens", lambda: checks.embed_tokens,
     lambda: lambda patches, c, d, pos: (titn_edu.build_model("titn-tiny", num_classes=2), embed_tokens_ok(patches, c, d, pos))[1],
     "titn_edu.model.TITN.__init__"),
    ("titn_loss", lambda: checks.titn_loss, lambda: lambda c, d, y, t, a: TITNLoss(alpha=a)(c, d, y, t), "titn_edu.losses"),
    ("cutmix_box, the checker's reference", lambda: checks.cutmix_box, lambda: checks._reference_cutmix_box,
     "titn_edu.checks.nb06_loss._reference_cutmix_box"),
    ("attention_rollout", lambda: checks.attention_rollout, lambda: lambda m, t: viz.attention_rollout(m, token=t),
     "titn_edu.viz.attention_rollout"),
]


@pytest.mark.parametrize("what, check, library, named", LIBRARY, ids=[row[0] for row in LIBRARY])
def test_the_library_own_implementation_fails_and_the_message_says_so(what, check, library, named):
    message = fails(check(), library(), DELEGATED, named)
    assert "case 1 of" in message


# ---------------------------------------------- reaching the library in roundabout ways
def _reimported_attention():
    """``titn_edu/attention.py`` loaded again under another name: new function objects, the same code."""
    spec = importlib.util.spec_from_file_location("my_copy_of_attention", titn_edu.attention.__file__,
                                                  submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "titn_edu"
    spec.loader.exec_module(module)
    return module.scaled_dot_product_attention


def _copied_function():
    f = titn_edu.scaled_dot_product_attention
    copy = types.FunctionType(f.__code__, f.__globals__, "my_attention", f.__defaults__, f.__closure__)
    copy.__kwdefaults__ = f.__kwdefaults__
    return copy


class _Helper:
    def attend(self, q, k, v):
        from titn_edu.attention import scaled_dot_product_attention as sdpa  # renamed on import

        return sdpa(q, k, v)


@pytest.mark.parametrize("student", [
    lambda: lambda q, k, v: titn_edu.scaled_dot_product_attention(q, k, v),   # wrapped in a lambda
    lambda: functools.partial(titn_edu.scaled_dot_product_attention),          # wrapped in a partial
    lambda: _Helper().attend,                                                  # inside a method, renamed on import
    _copied_function,                                                          # a copy of the function object
    _reimported_attention,                                                     # the module loaded a second time
    lambda: lambda q, k, v: (attention_ok(q, k, v), titn_edu.scaled_dot_product_attention(q, k, v))[1],  # only used
], ids=["lambda", "partial", "method-renamed", "function-copy", "reimported-module", "result-discarded"])
def test_delegation_is_caught_however_the_library_is_reached(student):
    fails(checks.attention, student(), DELEGATED, "scaled_dot_product_attention")


class _SubclassMHA(titn_edu.MultiHeadAttention):
    """No code of its own: everything inherited."""


class _SuperMHA(MHA):
    def forward(self, x):
        return titn_edu.MultiHeadAttention.forward(self, x)  # the library's method on our own module


class _InnerBlock(nn.Module):
    """The library's block, built on the fly inside forward and handed our weights."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        ref = titn_edu.TITNBlock(**kwargs)
        self.inner, self.patch_residual, self.outer = ref.inner, ref.patch_residual, ref.outer

    def forward(self, pixels, tokens):
        return titn_edu.TITNBlock.forward(self, pixels, tokens)


@pytest.mark.parametrize("check, student, named", [
    (checks.multi_head_attention, _SubclassMHA, "is or derives from titn_edu.attention.MultiHeadAttention"),
    (checks.multi_head_attention, _SuperMHA, "titn_edu.attention.MultiHeadAttention.forward"),
    (checks.inner_outer_block, _InnerBlock, "titn_edu.blocks.TITNBlock"),
    (checks.transformer_block, type("Sub", (titn_edu.TransformerBlock,), {}), "derives from titn_edu.blocks.TransformerBlock"),
])
def test_class_delegation_is_caught(check, student, named):
    fails(check, student, DELEGATED, named)


def test_building_blocks_an_exercise_allows_still_pass(capsys):
    # The transformer block may use the library's attention and MLP, the TITN block its TransformerBlock.
    checks.transformer_block(BlockStudent, seed=4)
    checks.inner_outer_block(TITNStudent, seed=4)
    assert capsys.readouterr().out.count("✓") == 2


def test_the_watch_leaves_profilers_as_they_were():
    calls = []

    def profiler(frame, event, arg):
        calls.append(event)

    sys.setprofile(profiler)
    try:
        checks.attention(attention_ok)
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert "call" in calls  # chained: the earlier profiler still saw the student's calls
    checks.attention(attention_ok)
    assert sys.getprofile() is None


# ------------------------------------------------------------ broken code, never a crash
@pytest.fixture
def short_limit(monkeypatch):
    monkeypatch.setattr(harness, "TIME_LIMIT_S", 0.5)


def test_code_that_hangs_fails_its_case_in_time(short_limit):
    def endless(q, k, v):
        while True:
            pass

    start = time.monotonic()
    fails(checks.attention, endless, "case 1 of 4", "did not finish within 0.5 s")
    assert time.monotonic() - start < 5


def test_code_that_swallows_the_time_limit_is_stopped_anyway(short_limit):
    def stubborn(q, k, v):
        while True:
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: BLE001  (what a careless student might write)
                pass

    start = time.monotonic()
    trace = sys.gettrace()
    fails(checks.attention, stubborn, "case 1 of 4", "did not finish within 0.5 s")
    assert time.monotonic() - start < 10
    assert sys.gettrace() is trace


def test_a_class_whose_constructor_hangs_or_raises(short_limit):
    class Slow(MHA):
        def __init__(self, dim, num_heads, *, qkv_bias=False):
            time.sleep(60)

    class Broken(MHA):
        def __init__(self, dim, num_heads, *, qkv_bias=False):
            raise ValueError("not today")

    fails(checks.multi_head_attention, Slow, "did not finish within")
    fails(checks.multi_head_attention, Broken, "raised ValueError: not today", "could not build your class")


@pytest.mark.parametrize("raised, needle", [(RuntimeError("boom"), "raised RuntimeError: boom"),
                                            (SystemExit(3), "raised SystemExit"),
                                            (AssertionError("my own assert"), "raised AssertionError: my own assert")])
def test_code_that_raises_fails_its_case(raised, needle):
    def crash(*args, **kwargs):
        raise raised

    fails(checks.layer_norm, crash, "layer_norm check failed on case 1 of 4", needle)


def test_keyboard_interrupt_still_stops_a_check():
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checks.layer_norm(interrupted)


@pytest.mark.parametrize("check, result, needle", [
    (checks.layer_norm, None, "should be a torch.Tensor"),
    (checks.layer_norm, [1.0, 2.0], "got list"),
    (checks.patchify, "patches", "got str"),
    (checks.attention, torch.zeros(2), "expected a pair"),
    (checks.block_parameters, "many", "expected an int"),
    (checks.inner_flops, 1.5, "expected an int"),
    (checks.titn_loss, torch.zeros(3), "scalar"),
    (checks.cutmix_box, (1, 2, 3), "expected ((x1, y1, x2, y2), lam)"),
])
def test_the_wrong_type_gets_a_clear_message(check, result, needle):
    fails(check, lambda *args, **kwargs: result, needle)


def test_a_module_that_returns_the_wrong_type():
    class ReturnsTuple(MHA):
        def forward(self, x):
            return super().forward(x), None

    fails(checks.multi_head_attention, ReturnsTuple, "should be a torch.Tensor", "got tuple")


# ------------------------------------------------------------------------------ time limits
@pytest.mark.skipif(not guard.can_interrupt(), reason="needs POSIX signals in the main thread")
def test_time_limits_nest_and_restore_the_outer_one():
    with pytest.raises(guard.TimeLimitExceeded) as info:
        with guard.time_limit(0.3):
            with guard.time_limit(5):
                time.sleep(2)
    assert info.value.args[0] == 0.3  # the outer, earlier deadline fired
    with pytest.raises(guard.TimeLimitExceeded) as info:
        with guard.time_limit(1.0):
            with guard.time_limit(0.2):
                time.sleep(0.05)   # the inner block finishes in time ...
            time.sleep(3)          # ... and the outer limit still holds afterwards
    assert info.value.args[0] == 1.0
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_forbid_rejects_what_it_cannot_watch():
    with pytest.raises(TypeError, match="forbid"):
        checks.forbid(42)
    assert guard.forbid(math.sqrt).builtins and guard.forbid(titn_edu.losses).folders


# ------------------------------------------------------- a question graded on a measured outcome
def test_within_budget_returns_the_result_and_the_time_it_took():
    result, took = checks.within_budget(lambda n: sum(range(n)), 1000, seconds=5)
    assert result == 499500 and 0 <= took < 5


def test_within_budget_fails_clearly_when_over_budget_raising_or_delegating(short_limit):
    def train_forever():
        while True:
            pass

    with pytest.raises(AssertionError, match=r"training check failed .*did not finish within 0\.3 s"):
        checks.within_budget(train_forever, seconds=0.3)
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        checks.within_budget(lambda: 1 / 0, seconds=5)
    with pytest.raises(AssertionError, match="runs titn_edu.train.fit"):  # e.g. a question that asks for one's own loop
        checks.within_budget(lambda: titn_edu.fit(None, None, epochs=1), seconds=5, forbidden=checks.forbid(titn_edu.fit))
