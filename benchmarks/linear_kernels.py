#!/usr/bin/env python
"""The matrix multiplies of TITN's linear layers: BLAS (``F.linear``) against oneDNN, side by side.

    python benchmarks/linear_kernels.py [--batch 128] [--threads 1] [--repeats 15] [--rounds 3]

For every linear layer shape of ``build_model("titn")`` at batch 128 it times the three products of
a training step — forward ``x Wᵀ``, input gradient ``g W`` and weight gradient ``gᵀ x`` — with
PyTorch's default CPU kernel (BLAS: MKL on x86) and with oneDNN's
(``torch.ops.mkldnn._linear_pointwise``). Best of ``--rounds`` rounds, CPU time of this process.
The step columns add up a training step's three products for ``titn_edu.Linear``'s two kernels:
``"blas"`` (all three on BLAS) and ``"onednn"`` (oneDNN for the forward pass and the input
gradient, BLAS for the weight gradient); ``titn_edu.Linear`` times the two once per shape and keeps
the faster (``titn_edu.tuning``), so the last line also adds up the faster of the two per layer.
"""

from __future__ import annotations

import argparse
import time

import torch

from titn_edu.linear import onednn_linear_available


def _time(fn, repeats: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not onednn_linear_available():
        raise SystemExit("this PyTorch build has no oneDNN linear kernel; titn_edu.Linear uses F.linear here.")
    torch.set_num_threads(args.threads)
    onednn = torch.ops.mkldnn._linear_pointwise.default
    b = args.batch
    # (name, rows, in, out): TITN at 32×32 px, patch 8, pixel 2: 18 outer tokens of 192, 16 × 16 pixel tokens of 12.
    shapes = [
        ("outer qkv", b * 18, 192, 576), ("outer proj", b * 18, 192, 192), ("outer fc1", b * 18, 192, 768),
        ("outer fc2", b * 18, 768, 192), ("patch residual", b * 16, 192, 192), ("inner qkv", b * 256, 12, 36),
        ("inner proj", b * 256, 12, 12), ("inner fc1", b * 256, 12, 48), ("inner fc2", b * 256, 48, 12),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {b}; ms per product, "
          f"best of {args.rounds} rounds × {args.repeats}")
    header = ("layer", "rows×in→out", "fwd BLAS", "fwd oneDNN", "dX BLAS", "dX oneDNN", "dW BLAS", "dW oneDNN",
              "step blas", "step onednn")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    total_blas = total_ours = total_best = 0.0
    for name, m, k, n in shapes:
        torch.manual_seed(0)
        x, w, bias, g = torch.randn(m, k), torch.randn(n, k), torch.randn(n), torch.randn(m, n)
        wt = w.t().contiguous()
        fns = {
            "fwd BLAS": lambda: torch.addmm(bias, x, w.t()),
            "fwd oneDNN": lambda: onednn(x, w, bias, "none", [], ""),
            "dX BLAS": lambda: g.mm(w),
            "dX oneDNN": lambda: onednn(g, wt, None, "none", [], ""),
            "dW BLAS": lambda: g.t().mm(x),
            "dW oneDNN": lambda: onednn(g.t(), x.t(), None, "none", [], ""),
        }
        best = {key: min(_time(fn, args.repeats) for _ in range(args.rounds)) for key, fn in fns.items()}
        blas = best["fwd BLAS"] + best["dX BLAS"] + best["dW BLAS"]
        ours = best["fwd oneDNN"] + best["dX oneDNN"] + best["dW BLAS"]
        total_blas += blas
        total_ours += ours
        total_best += min(blas, ours)
        cells = [name, f"{m}×{k}→{n}"] + [f"{best[key]:.2f}" for key in fns] + [f"{blas:.2f}", f"{ours:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nper block (all nine layers): blas {total_blas:.1f} ms, onednn {total_ours:.1f} ms, "
          f"the faster per layer {total_best:.1f} ms ({total_blas / total_best:.2f}× blas, {total_ours / total_best:.2f}× onednn)")


if __name__ == "__main__":
    main()
