"""Choose the fastest of several equivalent CPU kernels by timing them once per shape.

Which way of computing a small operation is fastest on a CPU depends on the processor: on the
machine the library was first tuned on (AMD Zen 4), TITN's inner attention (2,048 sequences of 16
pixel tokens, heads of 6 features) is fastest with products computed transposed and a written-out
backward pass; on an Intel Xeon with the same PyTorch, that path is 1.4× slower with gradients and
1.9× slower without than the alternatives (``benchmarks/attention_paths.py``, ``docs/benchmarks.md``).
So, like cuDNN's benchmark mode, the library times the candidates the first time it meets a
shape, on inputs of that shape, and keeps the fastest for the rest of the process.

All candidates compute the same function (``tests/test_fast_path.py`` checks every one of them
against eq. 1, outputs and gradients); they differ in the order of float32 roundings only.

* :func:`choices` shows what was chosen, per shape; :func:`clear` forgets it.
* ``titn_edu.tuning.enabled = False`` — or the environment variable ``TITN_EDU_AUTOTUNE=0`` before
  import — turns timing off: every call then takes the documented default, the same on every
  machine and every run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Mapping

import torch

__all__ = ["enabled", "choices", "clear", "fastest", "can_time"]

#: Time the candidates (``True``, the default) or always take the default.
enabled: bool = os.environ.get("TITN_EDU_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")

_chosen: dict[Hashable, str] = {}


def choices() -> dict[Hashable, str]:
    """A copy of the choices made so far: ``{key: kernel name}`` (keys name the operation and shape)."""
    return dict(_chosen)


def clear() -> None:
    """Forget every choice; the next call of each shape times its candidates again."""
    _chosen.clear()


def can_time() -> bool:
    """Whether timing candidates here is safe and meaningful.

    Not while ``torch.compile`` traces, under a dispatch mode (``FlopCounterMode`` must see the
    default kernel's operators), inside ``torch.func`` transforms, or while saved-tensor hooks are
    active (activation checkpointing, ``save_on_cpu``), which would also act on the timing runs.
    """
    if not enabled or torch.compiler.is_compiling():
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active():
        return False
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    except (AttributeError, TypeError, RuntimeError):  # pragma: no cover - other PyTorch versions
        return False


def _seconds(run: Callable[[], object], repeats: int) -> float:
    try:
        run()  # warm-up: first-call allocations and kernel selection are not the kernel's speed
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return best
    except RuntimeError:  # a candidate this build or shape does not support is never chosen
        return float("inf")


def fastest(
    key: Hashable, setup: Callable[[], Mapping[str, Callable[[], object]]], *, default: str, repeats: int = 3
) -> str:
    """The name of the fastest kernel for ``key``, timing the candidates the first time ``key`` is seen.

    Args:
        key: what the choice depends on (operation, shapes, dtype, thread count, gradients or not).
        setup: called only when timing: returns ``{name: run}``, where ``run()`` calls that kernel
            once on inputs shaped like the real ones (with its backward pass, if training).
        default: the name returned when timing is off or not possible here (:func:`can_time`).
        repeats: timed runs per candidate after one warm-up; the minimum is compared.
    """
    if not enabled:
        return default
    if key in _chosen:
        return _chosen[key]
    if not can_time():
        return default
    candidates = setup()
    if default not in candidates:
        raise ValueError(f"default {default!r} is not one of the candidates {sorted(candidates)}.")
    times = {name: _seconds(run, repeats) for name, run in candidates.items()}
    best = min(times, key=times.__getitem__)
    _chosen[key] = best if times[best] < float("inf") else default
    return _chosen[key]
