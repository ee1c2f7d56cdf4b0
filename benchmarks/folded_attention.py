#!/usr/bin/env python
"""The inner stream's attention with its weights folded, against the library's kernels (tried, not adopted).

    python benchmarks/folded_attention.py [--batch 128] [--reps 15] [--threads 1]

Without a qkv bias, head ``i``'s scores are ``(Y W_Qi)(Y W_Ki)ᵀ = Y (W_Qi W_Kiᵀ) Yᵀ`` and its share of
the output projection is ``A_i (Y W_Vi) W_Oi = A_i Y (W_Vi W_Oi)``. Folding the two 12 × 12 products
``M_i = W_Qi W_Kiᵀ / √d`` and ``U_i = W_Vi W_Oi`` into the weights makes the keys the normalised
pixel tokens themselves: one product gives every head's scores (queries ``Y M_i`` stacked), one
softmax, and one product of all heads' weights with all heads' ``Y U_i`` gives the output with the
projection already applied (no concatenation, no ``proj``). Exact up to float32 rounding; the same
FLOPs in the projections, twice the (tiny) FLOPs in the two attention products.

Times ``qkv`` + attention + ``proj`` of one inner block (TITN at batch ``B``: ``16·B`` patches of 16
pixel tokens, 2 heads × 6 features), forward and forward + backward (gradients of the input and
of every weight), per call, median of ``--reps`` interleaved repetitions; with one thread CPU time
of this thread. ``docs/benchmarks.md`` (fifth round) has the figures and why it was not adopted.
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

from titn_edu.attention import KERNELS  # noqa: E402


def library(y, w_qkv, w_o, b_o, heads, kernel):
    return F.linear(KERNELS[kernel](F.linear(y, w_qkv), heads), w_o, b_o)


def folded(y, w_qkv, w_o, b_o, heads):
    n, t, c = y.shape
    d = c // heads
    w_q, w_k, w_v = w_qkv.view(3, heads, d, c).unbind(0)  # (h, d, c): the rows of head i
    m = torch.bmm(w_q.transpose(1, 2), w_k) * d**-0.5  # (h, c, c): scores = (y M_i) yᵀ
    u = torch.bmm(w_v.transpose(1, 2), w_o.view(c, heads, d).permute(1, 2, 0))  # (h, c, c): y U_i = head i through W_O
    queries = F.linear(y, m.transpose(1, 2).reshape(heads * c, c)).view(n, t * heads, c)  # rows (token, head)
    weights = torch.bmm(queries, y.transpose(1, 2)).softmax(dim=-1).view(n, t, heads * t)  # columns (head, key)
    values = F.linear(y, u.transpose(1, 2).reshape(heads * c, c)).view(n, t, heads, c).transpose(1, 2)
    return torch.bmm(weights, values.reshape(n, heads * t, c)) + b_o  # rows (head, key), as the columns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    heads, c = 2, 12
    y = torch.randn(16 * args.batch, 16, c)
    weights = [(torch.randn(3 * c, c) / c**0.5).requires_grad_(), (torch.randn(c, c) / c**0.5).requires_grad_(),
               torch.randn(c).requires_grad_()]
    leaf = y.clone().requires_grad_()
    grad = torch.randn_like(y)
    paths = {name: (lambda x, k=name: library(x, *weights, heads, k)) for name in ("transposed", "per_head", "sdpa")}
    paths["folded"] = lambda x: folded(x, *weights, heads)
    reference = torch.autograd.grad(library(leaf, *weights, heads, "per_head"), [leaf, *weights], grad)
    for name, fn in paths.items():  # every path computes the same values and gradients
        for a, b in zip(torch.autograd.grad(fn(leaf), [leaf, *weights], grad), reference):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
    times = {name: ([], []) for name in paths}
    for rep in range(args.reps + 2):
        for name, fn in paths.items():
            start = clock()
            with torch.no_grad():
                fn(y)
            middle = clock()
            torch.autograd.grad(fn(leaf), [leaf, *weights], grad)
            end = clock()
            if rep >= 2:  # two warm-up repetitions
                times[name][0].append(middle - start)
                times[name][1].append(end - middle)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), inner stream at batch {args.batch} "
          f"({16 * args.batch} × 16 tokens, {heads} heads × {c // heads}); ms per call, median of {args.reps}")
    print("| path | forward | forward + backward |")
    print("|---|---:|---:|")
    for name, (fwd, both) in times.items():
        print(f"| {name} | {statistics.median(fwd) * 1e3:.2f} | {statistics.median(both) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
