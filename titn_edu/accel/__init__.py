"""Optional CPU acceleration: TITN's inner (pixel) blocks as one compiled kernel, behind one seam.

The model in :mod:`titn_edu` is plain PyTorch and never imports this package. Acceleration is
asked for, never implied::

    model = titn_edu.accel.accelerate(titn_edu.build_model("titn", num_classes=10))

:func:`accelerate` puts an :class:`~titn_edu.accel.inner_block.InnerBlockKernel` into the
``accelerator`` attribute of every :class:`titn_edu.TransformerBlock` the kernel can compute — the
inner blocks, over 16 pixel tokens of a few features each. That attribute is the seam: a block
hands a call to its accelerator only when ``accelerator.applies(block, x)``, and otherwise runs
its own code. Parameters, ``state_dict`` keys, outputs and gradients stay the same (to float32
rounding; ``tests/test_accel.py``), and ``titn_edu.set_fast_path(model, False)`` still gives the
reference path, since the kernel stands aside when attention is not on its fast path.

Where it applies, and why (measured figures and commands in ``docs/performance.md``):

* **x86-64 with AVX2 and FMA**, on Linux or macOS, with a C++ compiler (``$CXX``, else ``c++``,
  ``g++`` or ``clang++``): the library is built on first use, in seconds, into a private folder
  (:mod:`titn_edu.accel.build`, which also explains what is checked before it is loaded).
* Anywhere else, or if the build fails, :func:`accelerate` leaves the model as it is and says so
  in one warning: the model runs on PyTorch operators, a little slower, with the same results.
* Only in float32 on CPU, outside autocast, ``torch.compile``, dispatch modes (such as
  :class:`torch.utils.flop_counter.FlopCounterMode`) and ``torch.func`` transforms; the kernel
  gives first derivatives only.
"""

from __future__ import annotations

import threading
import warnings

from torch import nn

from . import build
from .inner_block import InnerBlockKernel, declare, fits

__all__ = ["accelerate", "available", "library_path", "InnerBlockKernel"]

_lock = threading.Lock()
_state: dict = {}  # "kernel" (an InnerBlockKernel), "path", or "failure" (why there is none), once known


def _kernel() -> InnerBlockKernel | None:
    """The kernel, built and loaded on first call (``None``, with the reason kept, if it cannot be had)."""
    with _lock:
        if not _state:
            if not build.cpu_supported():
                _state["failure"] = "this processor is not x86-64 with AVX2 and FMA on Linux or macOS"
            else:
                try:
                    lib, path = build.load()
                    _state.update(kernel=InnerBlockKernel(declare(lib)), path=path)
                except (OSError, RuntimeError) as exc:
                    _state["failure"] = str(exc)
        return _state.get("kernel")


def available() -> bool:
    """Whether the kernel can be used here (builds and loads it on the first call)."""
    return _kernel() is not None


def library_path():
    """The loaded library's path, or ``None`` before the first use or where it is unavailable."""
    return _state.get("path")


def accelerate(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Give every block of ``model`` the kernel computes an accelerator (``enabled=False`` takes them away).

    Returns ``model``, changed in place. Where the kernel cannot be had, one ``RuntimeWarning``
    says why and the model is returned as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate expects a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False; got {enabled!r}.")
    blocks = [m for m in model.modules() if hasattr(m, "accelerator") and fits(m)]
    kernel = _kernel() if enabled and blocks else None
    if enabled and blocks and kernel is None:
        warnings.warn(f"titn_edu.accel: no fused inner-block kernel ({_state['failure']}); the model runs on "
                      f"PyTorch operators, with the same results.", RuntimeWarning, stacklevel=2)
    for block in blocks:
        block.accelerator = kernel
    return model
