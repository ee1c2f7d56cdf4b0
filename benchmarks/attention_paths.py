#!/usr/bin/env python
"""Time the ways of computing multi-head attention on CPU for TITN's two streams (forward, forward+backward).

    python benchmarks/attention_paths.py [--batch 64] [--reps 25] [--threads 1]

Inputs are the ``qkv`` projections; outputs the concatenated heads (``proj`` excluded). Streams at
batch ``B`` (the paper's 32×32 configuration): inner ``(16·B, 16 tokens, 2 heads × 6)``, outer
``(B, 18 tokens, 3 heads × 64)``. Paths:

* ``unbind``: ``rearrange(qkv, "b t (three h d) -> three b h t d")`` + fused SDPA (the first version);
* ``split``: q, k, v split along the feature axis, then fused SDPA (``MultiHeadAttention`` on GPU,
  and on CPU for sequences of more than 128 tokens);
* ``per_head``: two batched matmuls per head on strided views of ``qkv``, the ``d × T`` products
  computed transposed, with a written-out backward pass (``MultiHeadAttention`` on CPU for heads
  of at most 16 features over at most 128 tokens: the inner stream);
* ``per_head_autograd``: the same two matmuls per head, untransposed, backward by autograd
  (``MultiHeadAttention`` on CPU for larger heads over at most 128 tokens: the outer stream);
* ``packed``: all heads in one pair of batched matmuls, other heads' features masked out (not a
  library kernel: it multiplies by zeros, ``h`` times the attention FLOPs, and on the AMD Zen 3 of
  the fifth round in ``docs/benchmarks.md`` it is slower than the per-head kernels);
* ``explicit``: eq. 1 with the weights materialised (``fused=False``, the reference).

Times are per call, min and median over ``--reps`` interleaved repetitions; with one thread they
are CPU time of this thread (``time.thread_time``), so other programs on the machine disturb them
little; with more threads, wall-clock time.
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
from einops import rearrange  # noqa: E402

from titn_edu.attention import _attention_per_head, _PerHeadAttention, scaled_dot_product_attention  # noqa: E402


def unbind(qkv, h):
    q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=h)
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h t d -> b t (h d)")


def split(qkv, h):
    q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=h) for t in qkv.chunk(3, dim=-1))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h t d -> b t (h d)")


def per_head(qkv, h):
    return _PerHeadAttention.apply(qkv, h)


def per_head_autograd(qkv, h):
    return _attention_per_head(qkv, h)


def packed(qkv, h):
    """All heads in one pair of batched matmuls (queries repeated per head, other heads masked out).

    Fast for tiny heads, but it multiplies by zeros: FlopCounterMode counts h-fold attention FLOPs.
    """
    b, t, three_dim = qkv.shape
    dim = three_dim // 3
    d = dim // h
    q, k, v = qkv.split(dim, dim=-1)
    mask = torch.kron(torch.eye(h), torch.ones(t, d)).view(h, t, dim)
    weights = torch.bmm((q.unsqueeze(1) * (mask * d**-0.5)).view(b, h * t, dim), k.transpose(1, 2)).softmax(-1)
    return (torch.bmm(weights, v).view(b, h, t, dim) * mask).sum(dim=1)


def explicit(qkv, h):
    q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=h)
    return rearrange(scaled_dot_product_attention(q, k, v)[0], "b h t d -> b t (h d)")


PATHS = {"unbind": unbind, "split": split, "per_head": per_head, "per_head_autograd": per_head_autograd,
         "packed": packed, "explicit": explicit}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.reps} reps, {'thread CPU time' if args.threads == 1 else 'wall time'} in ms per call")
    for stream, (rows, tokens, heads, head_dim) in {
        "inner": (16 * args.batch, 16, 2, 6),
        "outer": (args.batch, 18, 3, 64),
    }.items():
        qkv = torch.randn(rows, tokens, 3 * heads * head_dim)
        grad = torch.randn(rows, tokens, heads * head_dim)
        reference = explicit(qkv, heads)
        jobs = {}
        for name, fn in PATHS.items():
            torch.testing.assert_close(fn(qkv, heads), reference, atol=1e-5, rtol=1e-4)

            def forward(fn=fn):
                with torch.inference_mode():
                    fn(qkv, heads)

            def forward_backward(fn=fn):
                x = qkv.detach().requires_grad_()
                fn(x, heads).backward(grad)

            jobs[(name, "forward")] = forward
            jobs[(name, "fwd+bwd")] = forward_backward
        times = {key: [] for key in jobs}
        for job in jobs.values():  # warm-up
            job()
        for _ in range(args.reps):
            for key, job in jobs.items():
                start = clock()
                job()
                times[key].append((clock() - start) * 1e3)
        print(f"\n{stream}: {rows} sequences x {tokens} tokens, {heads} heads x {head_dim}")
        print(f"  {'path':<17} {'forward min':>12} {'median':>8} {'fwd+bwd min':>12} {'median':>8}")
        for name in PATHS:
            f, b = times[(name, "forward")], times[(name, "fwd+bwd")]
            print(f"  {name:<17} {min(f):>12.2f} {statistics.median(f):>8.2f} {min(b):>12.2f} {statistics.median(b):>8.2f}")
    product_orientation(args.batch, args.reps, clock)


def product_orientation(batch: int, reps: int, clock) -> None:
    """One head's ``A V`` for the inner stream, computed as is (outputs ``T × d``) and transposed (``d × T``)."""
    a, v = torch.randn(16 * batch, 16, 16).softmax(-1), torch.randn(16 * batch, 16, 6)
    jobs = {"A V      -> (T x d)": lambda: torch.bmm(a, v),
            "Vt At    -> (d x T)": lambda: torch.bmm(v.transpose(1, 2), a.transpose(1, 2))}
    torch.testing.assert_close(jobs["A V      -> (T x d)"](), jobs["Vt At    -> (d x T)"]().transpose(1, 2))
    times = {key: [] for key in jobs}
    for _ in range(reps):
        for key, job in jobs.items():
            start = clock()
            job()
            times[key].append((clock() - start) * 1e3)
    print(f"\ninner stream, one head's product, {16 * batch} sequences (ms per call, min / median):")
    for key, t in times.items():
        print(f"  {key}  {min(t):.3f} / {statistics.median(t):.3f}")


if __name__ == "__main__":
    main()
