#!/usr/bin/env python
"""The MLP's bias + GELU on CPU: the fused pass of titn_edu.native against PyTorch's operators.

    python benchmarks/bias_gelu.py [--rows 2304] [--hidden 768] [--threads 1] [--rounds 15]

On TITN's outer hidden activations (batch 128: 2,304 tokens x 768 features), alternated round by
round in one process, medians in ms (the last of three calls each round, so that neither side pays
for first-touch page faults of fresh 7 MB outputs, which a training step in steady state does not):

* forward: PyTorch applies ``F.gelu`` to the product that ``addmm`` wrote with its bias; the kernel
  adds the bias and applies the GELU to the product written without it (``native.bias_gelu``).
* backward: PyTorch's ``gelu_backward`` and the bias gradient's column sum; the kernel's one pass.

For scale it also prints the GFLOP/s of the first layer's product (``x @ W.T``, 2,304 x 192 ->
768) and of a 2048 x 2048 product, the core's sgemm peak.
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

from titn_edu import native  # noqa: E402


def _ms(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2304)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not native.available():
        sys.exit("the kernel is not available here (see the warning above); nothing to compare")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.rows, args.hidden, generator=gen)
    bias = torch.randn(args.hidden, generator=gen)
    z_with_bias = z + bias
    grad = torch.randn(args.rows, args.hidden, generator=gen)
    zk, bk = z.clone().requires_grad_(), bias.clone().requires_grad_()
    out = native.bias_gelu(zk, bk)

    runs = {
        ("forward", "pytorch"): lambda: F.gelu(z_with_bias),
        ("forward", "kernel"): lambda: native.bias_gelu(z, bias),
        ("backward", "pytorch"): lambda: torch.ops.aten.gelu_backward(grad, z_with_bias).sum(0),
        ("backward", "kernel"): lambda: torch.autograd.grad(out, (zk, bk), grad, retain_graph=True),
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():  # the last of three calls: the allocator reuses the memory just freed
            times[key].append(_ms(fn, 3)[-1])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rows} x {args.hidden}, "
          f"{args.rounds} rounds, median ms")
    for mode in ("forward", "backward"):
        t_ref, t_k = (statistics.median(times[(mode, n)]) for n in ("pytorch", "kernel"))
        print(f"  {mode:<8} pytorch {t_ref:6.2f}   kernel {t_k:6.2f}   speed-up {t_ref / t_k:4.2f}x")

    x = torch.randn(args.rows, 192, generator=gen)
    w = torch.randn(args.hidden, 192, generator=gen)
    a = torch.randn(2048, 2048, generator=gen)
    for name, fn, flop in (("x @ W.T, first layer", lambda: x @ w.t(), 2 * args.rows * 192 * args.hidden),
                           ("2048 x 2048 product", lambda: a @ a, 2 * 2048**3)):
        t = statistics.median(_ms(fn, 6)[1:])
        print(f"  {name:<22} {t:7.2f} ms  {flop / t / 1e6:5.1f} GFLOP/s")


if __name__ == "__main__":
    main()
