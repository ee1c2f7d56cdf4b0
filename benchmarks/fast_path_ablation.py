#!/usr/bin/env python
"""What each CPU fast path of TITN is worth: the model with one fast path off at a time, against timm's TNT.

    python benchmarks/fast_path_ablation.py [--mode train|infer] [--rounds 12] [--threads 1] [--batch 128]

Variants (same weights): ``all`` (the default model), ``no-native`` (every ``TransformerBlock``
with ``fused = False``: the inner blocks on PyTorch operators, not the fused kernel of
:mod:`titn_edu.native`), ``no-bias-gelu`` (every ``Mlp`` with ``fused = False``: the first
layer's product with its bias, then PyTorch's GELU, not :func:`titn_edu.native.bias_gelu`),
``no-onednn`` (every ``titn_edu.Linear``
with ``fused = False``: ``F.linear``), ``onednn`` (every ``titn_edu.Linear`` on oneDNN's product,
untimed, as before linear kernels were timed), ``no-prune`` (``prune_last_block = False``: the last
block computes every token), ``no-attention`` (every ``MultiHeadAttention`` with
``fused = False``: eq. 1 written out), ``untimed`` (every attention on the kernel it takes when
timing is off, as before kernels were timed: ``"transposed"`` for the inner stream's heads,
``"per_head"`` for the outer stream's), ``sdpa`` (every attention on PyTorch's fused kernel),
``reference`` (``set_fast_path(model, False)``), timm's TNT, and — as a bound, not a TITN —
``deit-bound``: ``build_model("deit")`` with every fast path, i.e. TITN's outer stream alone (the
same 18 tokens, heads and distillation token) with the inner stream taken out, as if it cost nothing. Each round runs every variant once (order reversed every other round); the figure per variant
is the median over rounds of TNT's time / the variant's time in the same round (CPU time of the
process), i.e. the speed relative to TNT. Needs the benchmark extra (timm).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from titn_edu import Linear, Mlp, MultiHeadAttention, TransformerBlock, build_model, set_fast_path, tuning
from titn_edu.bench import _make_step, build_timm_tnt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model("titn", num_classes=100)

    def variant(edit) -> torch.nn.Module:
        model = build_model("titn", num_classes=100)
        model.load_state_dict(base.state_dict())
        edit(model)
        return model

    def setting(kind, **attributes):
        """Set attributes on every module of ``kind``; a callable value is called with the module."""
        def edit(model):
            for m in model.modules():
                if isinstance(m, kind):
                    for name, value in attributes.items():
                        setattr(m, name, value(m) if callable(value) else value)
        return edit

    models = {
        "all": base,
        "no-native": variant(setting(TransformerBlock, fused=False)),
        "no-bias-gelu": variant(setting(Mlp, fused=False)),
        "no-onednn": variant(setting(Linear, fused=False)),
        "onednn": variant(setting(Linear, kernel="onednn")),
        "no-prune": variant(lambda m: setattr(m, "prune_last_block", False)),
        "no-attention": variant(setting(MultiHeadAttention, fused=False)),
        "untimed": variant(setting(MultiHeadAttention, kernel=lambda m: "transposed" if m.head_dim <= 16 else "per_head")),
        "sdpa": variant(setting(MultiHeadAttention, kernel="sdpa")),
        "reference": variant(lambda m: set_fast_path(m, False)),
        "timm-tnt": build_timm_tnt(base.config),
        "deit-bound": build_model("deit", num_classes=100),
    }
    images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 100, (args.batch,))
    steps = {name: _make_step(m, args.mode, images, labels, amp=False, compile=False) for name, m in models.items()}
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.process_time()
            steps[name]()
            times[name].append(time.process_time() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, mode {args.mode}, "
          f"{args.rounds} rounds, CPU time per step")
    print("| variant | median s per step | images per CPU-s | speed vs timm TNT (median of per-round ratios) | min | max |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = times["timm-tnt"]
    for name in names:
        ratios = [ref[i] / times[name][i] for i in range(args.rounds)]
        med = statistics.median(times[name])
        print(f"| {name} | {med:.3f} | {args.batch / med:.1f} | {statistics.median(ratios):.3f} | "
              f"{min(ratios):.3f} | {max(ratios):.3f} |")
    print("attention kernels chosen by timing (`all`):",
          ", ".join(f"{key[1]} x {key[2]} heads, {'train' if key[-1] else 'infer'}: {name}"
                    for key, name in tuning.choices().items() if key[0] == "attention"))
    print("linear kernels chosen by timing (rows x in -> out):",
          ", ".join(f"{key[1]} x {key[2][1]} -> {key[2][0]}{' + GELU' if key[-1] else ''}: {name}"
                    for key, name in tuning.choices().items()
                    if key[0] == "linear" and key[6] == (args.mode == "train")))


if __name__ == "__main__":
    main()
