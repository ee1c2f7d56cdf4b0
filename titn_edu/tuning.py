"""Choose the fastest of several equivalent CPU kernels by timing them once per shape, per machine.

Which way of computing a small operation is fastest on a CPU depends on the processor: on the
machine the library was first tuned on (AMD Zen 4), TITN's inner attention (2,048 sequences of 16
pixel tokens, heads of 6 features) is fastest with products computed transposed and a written-out
backward pass; on an Intel Xeon with the same PyTorch, that path is 1.4× slower with gradients and
1.9× slower without than the alternatives (``benchmarks/attention_paths.py``, ``docs/benchmarks.md``).
The same holds for the matrix multiplies of :class:`titn_edu.Linear`: oneDNN's beat BLAS's on the
Zen 4, tied on the Xeon, and lose by up to 20 % on the outer stream's products on an AMD Zen 3
(``benchmarks/linear_kernels.py``). So, like cuDNN's benchmark mode, the library times the
candidates the first time it meets a shape, on inputs of that shape, and keeps the fastest: the
attention kernel per ``(qkv shape, heads)`` and the linear kernel per ``(rows, weight shape)``,
each also per thread count and with or without gradients. Timing every shape of a TITN training
step at batch 128 took about 1.3 s on a 2-core CPU, once per machine (``docs/benchmarks.md``,
fifth round).

All candidates compute the same function (``tests/test_fast_path.py`` checks every one of them
against eq. 1 or :func:`torch.nn.functional.linear`, outputs and gradients); they differ in the
order of float32 roundings only. So that two runs on one machine still give bitwise the same
results (:func:`titn_edu.seed_everything`), a choice is kept not only for the process but in a
small file, ``kernels.json``, in
``$TITN_EDU_CACHE_DIR``, else ``$XDG_CACHE_HOME/titn_edu``, else ``~/.cache/titn_edu``, under
the processor and the PyTorch version; later processes read it instead of timing again. Where
the file cannot be written, choices last for the process only.

* :func:`choices` shows what this process uses, per shape; :func:`clear` forgets it (and, with
  ``disk=True``, deletes the file).
* ``titn_edu.tuning.enabled = False`` — or the environment variable ``TITN_EDU_AUTOTUNE=0`` before
  import — turns timing off: every call then takes the documented default, the same on every
  machine and every run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import torch

from .utils import atomic_write, cpu_name

__all__ = ["enabled", "choices", "clear", "fastest", "can_time", "cache_file"]

#: Time the candidates (``True``, the default) or always take the default.
enabled: bool = os.environ.get("TITN_EDU_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")

_chosen: dict[Hashable, str] = {}
_stored: dict[str, str] | None = None  # this machine's entries of the cache file, read on first need


def choices() -> dict[Hashable, str]:
    """A copy of the choices this process uses: ``{key: kernel name}`` (keys name the operation and shape)."""
    return dict(_chosen)


def clear(*, disk: bool = False) -> None:
    """Forget every choice of this process (the next call of each shape looks again); ``disk=True`` also deletes the cache file."""
    global _stored
    _chosen.clear()
    _stored = None
    path = cache_file()
    if disk and path is not None:
        path.unlink(missing_ok=True)


def cache_file() -> Path | None:
    """The file choices are kept in between processes (module docstring); ``None`` when ``TITN_EDU_CACHE_DIR`` is empty."""
    folder = os.environ.get("TITN_EDU_CACHE_DIR")
    if folder is not None:
        return Path(folder).expanduser() / "kernels.json" if folder.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "titn_edu" / "kernels.json"


def _machine() -> str:
    """What a choice depends on beyond its key: the processor, the core count and the PyTorch build."""
    return f"{cpu_name(ids=True)} | {os.cpu_count()} cores | torch {torch.__version__}"


def _read() -> dict:
    path = cache_file()
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):  # missing, unreadable or damaged: time again, and rewrite it
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("machines"), dict) else {}


def _stored_choices() -> dict[str, str]:
    global _stored
    if _stored is None:
        entries = _read().get("machines", {}).get(_machine(), {})
        _stored = {k: v for k, v in entries.items() if isinstance(v, str)} if isinstance(entries, dict) else {}
    return _stored


def _store(key: str, name: str) -> None:
    _stored_choices()[key] = name
    path = cache_file()
    if path is None:
        return
    data = _read() or {"machines": {}}
    data["machines"].setdefault(_machine(), {})[key] = name
    try:
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:  # a read-only home, a full disk: the choice lasts for this process
        pass


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
    key: Hashable,
    names: Sequence[str],
    setup: Callable[[], Mapping[str, Callable[[], object]]],
    *,
    repeats: int = 3,
) -> str:
    """The name of the fastest kernel for ``key``: remembered, read from the cache file, or timed now.

    Args:
        key: what the choice depends on (operation, shapes, dtype, thread count, gradients or not);
            its ``repr`` names it in the cache file.
        names: the candidates; the first is the default, returned when timing is off or not
            possible here (:func:`can_time`).
        setup: called only when timing: returns ``{name: run}``, where ``run()`` calls that kernel
            once on inputs shaped like the real ones (with its backward pass, if training).
        repeats: timed runs per candidate after one warm-up; the minimum is compared.
    """
    default = names[0]
    if not enabled:
        return default
    if key in _chosen:
        return _chosen[key]
    if not can_time():
        return default
    stored = _stored_choices().get(repr(key))
    if stored in names:
        _chosen[key] = stored
        return stored
    runs = setup()
    times = {name: _seconds(runs[name], repeats) for name in names}
    best = min(times, key=times.__getitem__)
    _chosen[key] = best if times[best] < float("inf") else default
    _store(repr(key), _chosen[key])
    return _chosen[key]
