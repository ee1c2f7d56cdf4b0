#!/usr/bin/env python
"""How close the inner (pixel) stream is to the memory-traffic floor of unfused operators, on CPU.

    python benchmarks/memory_traffic.py [--batch 128] [--threads 1] [--reps 15]

The inner transformer works on tensors with 12 (or 48) features per pixel token, so its operators
are limited by memory traffic rather than by arithmetic. This script measures, for one TITN
block at the paper's 32×32 configuration:

1. the time of a forward + backward pass of each part — the inner transformer with the patch
   residual (steps 1–2 of ``TITNBlock``), and the outer transformer (step 3) for contrast;
2. the bytes every operator of that pass reads and writes (a ``TorchDispatchMode`` adds up the
   sizes of the tensors going into and out of each operator that moves data; views, which move
   nothing, are left out), and the FLOPs (``FlopCounterMode``);
3. the machine's rate for a plain elementwise pass (``torch.add(a, b, out=c)``: two tensors read,
   one written), over a tensor of the inner stream's size (it stays in cache) and over 64 MiB
   tensors (main memory).

``floor = bytes / rate`` is how fast the part could run if every operator stayed a separate pass
over memory, as eager PyTorch runs them, but moved data at the elementwise rate. A part whose
time is close to its floor can only get much faster by fusing operators (fewer passes), not by
better kernels for the same operators.

A second table times the two row-wise operators of the inner stream that are furthest from a
plain pass — LayerNorm over rows of 12 features and softmax over rows of 16 scores — against
other ways of writing them with PyTorch operators (forward without gradients, and forward +
backward).

Times are medians over ``--reps`` repetitions; with one thread they are CPU time of this thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from titn_edu import build_model  # noqa: E402

# Operators that allocate without writing, or alias their input without the view tag: no data moves.
_NO_TRAFFIC = {"empty", "empty_strided", "empty_like", "detach", "alias", "lift_fresh", "_unsafe_view"}


class TrafficCounter(TorchDispatchMode):
    """Adds up the bytes of the tensors read and written by each data-moving operator."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func.overloadpacket.__name__ in _NO_TRAFFIC:
            return out
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        self.calls += 1
        return out


def timed(fn, reps: int, thread_clock: bool) -> float:
    clock = time.thread_time if thread_clock else time.perf_counter
    fn()
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    thread_clock = args.threads == 1

    model = build_model("titn", num_classes=100)
    block = model.blocks[1]
    with torch.no_grad():
        pixels, tokens = model.embed(torch.randn(args.batch, 3, 32, 32))
    pixels, tokens = pixels.detach().requires_grad_(), tokens.detach().requires_grad_()
    grad_pixels, grad_tokens = torch.randn_like(pixels), torch.randn_like(tokens)

    def inner_part():  # TITNBlock steps 1–2: inner transformer, patch residual
        out = block.inner(pixels)
        residual = block.patch_residual(out, args.batch)
        new_tokens = tokens + F.pad(residual, (0, 0, block.num_prefix, block.num_suffix))
        torch.autograd.backward([out, new_tokens], [grad_pixels, grad_tokens])

    def outer_part():  # TITNBlock step 3: outer transformer
        torch.autograd.backward(block.outer(tokens), grad_tokens)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"pixel tokens {tuple(pixels.shape)}, patch tokens {tuple(tokens.shape)}")
    rates = {}
    for where, shape in (("cache", pixels.shape), ("memory", (2**24,))):
        a, b, c = torch.randn(shape), torch.randn(shape), torch.empty(shape)
        moved = 3 * a.numel() * a.element_size()
        rates[where] = moved / timed(lambda: torch.add(a, b, out=c), 4 * args.reps, thread_clock)
        print(f"elementwise pass, {where:<6} torch.add(a, b, out=c) over {moved / 3 / 2**20:4.1f} MiB tensors: "
              f"{rates[where] / 1e9:5.1f} GB/s")
    print()
    header = (f"{'part (forward + backward)':<26} {'ms':>7} {'MiB moved':>9} {'ops':>4} {'floor ms, cache':>15} "
              f"{'memory':>7} {'ms / floor':>16} {'GFLOP':>6} {'GFLOP/s':>7}")
    print(header)
    print("-" * len(header))
    for name, fn in (("inner + patch residual", inner_part), ("outer", outer_part)):
        seconds = timed(fn, args.reps, thread_clock)
        counter = TrafficCounter()
        with counter:
            fn()
        flops = FlopCounterMode(display=False)
        with flops:
            fn()
        floors = [counter.bytes / rates[where] for where in ("cache", "memory")]
        gflop = flops.get_total_flops() / 1e9
        print(f"{name:<26} {seconds * 1e3:7.2f} {counter.bytes / 2**20:9.1f} {counter.calls:4d} "
              f"{floors[0] * 1e3:15.2f} {floors[1] * 1e3:7.2f} {seconds / floors[0]:7.1f} – {seconds / floors[1]:<6.1f} "
              f"{gflop:6.3f} {gflop / seconds:7.1f}")
    print()
    formulations(pixels.detach(), block, args.reps, thread_clock)


def formulations(pixels: torch.Tensor, block, reps: int, thread_clock: bool) -> None:
    """Row-wise operators of the inner stream, as PyTorch runs them and written other ways."""
    c = pixels.shape[-1]
    norm = block.inner.norm1
    mean_of_row = torch.full((c, c), 1.0 / c)
    centre = torch.eye(c) - mean_of_row
    attn = block.inner.attn
    with torch.no_grad():  # head 0's scores q · kᵀ; qkv is laid out as (three, head, d) along the last axis
        qkv = attn.qkv(norm(pixels))
        scores = torch.bmm(qkv[..., :attn.head_dim], qkv[..., attn.dim:attn.dim + attn.head_dim].transpose(1, 2))

    def layer_norm(x):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def layer_norm_by_matmul(x):  # x - mean and the variance as 12 × 12 matrix products
        centred = x @ centre
        var = torch.square(centred) @ mean_of_row
        return torch.addcmul(norm.bias, centred * (var + norm.eps).rsqrt(), norm.weight)

    def layer_norm_feature_major(x):  # features first: the reductions run across rows
        xt = x.reshape(-1, c).t()
        var, mean = torch.var_mean(xt, 0, correction=0)
        out = torch.addcmul(norm.bias[:, None], (xt - mean) * (var + norm.eps).rsqrt(), norm.weight[:, None])
        return out.t().reshape(x.shape)

    def softmax_by_parts(s):
        e = (s - s.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    cases = [
        (f"LayerNorm {tuple(pixels.shape)}", pixels, {
            "PyTorch (as the model runs it)": layer_norm,
            "matrix products for the moments": layer_norm_by_matmul,
            "feature-major, reduce across rows": layer_norm_feature_major,
            "GroupNorm, one group of 12": lambda x: F.group_norm(
                x.reshape(-1, c), 1, norm.weight, norm.bias, norm.eps).view(x.shape)}),
        (f"softmax {tuple(scores.shape)}", scores, {
            "PyTorch (as the model runs it)": lambda s: s.softmax(-1),
            "max, exp, sum, divide": softmax_by_parts}),
    ]
    a, b, out = torch.randn_like(pixels), torch.randn_like(pixels), torch.empty_like(pixels)
    one_pass = timed(lambda: torch.add(a, b, out=out), 4 * reps, thread_clock)
    header = f"{'operator':<26} {'written as':<35} {'forward ms':>10} {'passes':>6} {'fwd+bwd ms':>10} {'max |diff|':>10}"
    print(header)
    print("-" * len(header))
    for name, x, ways in cases:
        expected = next(iter(ways.values()))(x).detach()
        leaf, grad = x.detach().clone().requires_grad_(), torch.randn_like(x)
        for i, (label, fn) in enumerate(ways.items()):
            with torch.inference_mode():
                forward = timed(lambda: fn(x), 2 * reps, thread_clock)
            both = timed(lambda: fn(leaf).backward(grad), 2 * reps, thread_clock)
            diff = "" if i == 0 else f"{(fn(x) - expected).abs().max().item():.1e}"
            print(f"{name if i == 0 else '':<26} {label:<35} {forward * 1e3:10.3f} {forward / one_pass:6.1f} "
                  f"{both * 1e3:10.3f} {diff:>10}")
    print(f"(passes: forward time / one elementwise pass over the pixel tokens, {one_pass * 1e3:.3f} ms)")


if __name__ == "__main__":
    main()
