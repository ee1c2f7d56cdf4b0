"""The fully connected layer ``y = x Wᵀ + b`` (the FC of eq. 4–5, and every projection), with a CPU fast path.

:class:`Linear` is :class:`torch.nn.Linear` (same parameters, same ``state_dict``, same maths) whose
forward, on CPU in float32, can call oneDNN's matrix multiply (``"onednn"``) instead of the BLAS
one :func:`torch.nn.functional.linear` uses there (``"blas"``). Which is faster depends on the
processor and the shape (``benchmarks/linear_kernels.py``, ``docs/benchmarks.md``): on an AMD Zen 4
oneDNN was about 10 % (outer stream) to 2× (inner stream) faster for the forward pass and the input
gradient; on an Intel Xeon it was level in training; on an AMD Zen 3 BLAS is up to 20 % faster for
the outer stream's 192- and 768-feature products while oneDNN stays faster for the inner stream's
12-feature ones. So, as :class:`titn_edu.MultiHeadAttention` does for attention, a layer times the
two kernels the first time it meets a shape (:mod:`titn_edu.tuning`) and keeps the faster;
:attr:`Linear.kernel` names one by hand. The weight gradient always runs on BLAS, which is faster
for it. Results agree with :func:`torch.nn.functional.linear` to float32 rounding
(``tests/test_fast_path.py``).

It falls back to :func:`torch.nn.functional.linear` — the explicit path, and the one every other
device takes — whenever the fast one does not apply: another device or dtype, autocast,
``torch.compile`` tracing, a dispatch mode such as :class:`torch.utils.flop_counter.FlopCounterMode`,
``torch.func`` transforms, a build without oneDNN, or ``fused = False``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import tuning

__all__ = ["Linear", "linear", "linear_gelu", "onednn_linear_available", "LINEAR_KERNELS"]

#: The kernels a fast :class:`Linear` chooses between on CPU: oneDNN's product (forward pass and
#: input gradient; the first, the default when timing is off) or BLAS's, i.e. ``F.linear``.
LINEAR_KERNELS = ("onednn", "blas")


def _find_onednn_linear():
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        probe_x = torch.linspace(-1, 1, 12).view(3, 4)  # no random numbers: importing must not move the RNG
        probe_w = torch.linspace(1, -0.5, 8).view(2, 4)
        ok = torch.backends.mkldnn.is_available() and torch.allclose(
            op(probe_x, probe_w, None, "none", [], ""), F.linear(probe_x, probe_w), atol=1e-5
        )
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - builds without oneDNN
        return None
    return op if ok else None


_ONEDNN_LINEAR = _find_onednn_linear()


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel :class:`Linear` uses on CPU."""
    return _ONEDNN_LINEAR is not None


def _onednn_applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        _ONEDNN_LINEAR is not None
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and type(x) is Tensor
        and x.dim() >= 2
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )


def _mm(x2d: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return _ONEDNN_LINEAR(x2d, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``x Wᵀ + b`` with oneDNN for the forward pass and the input gradient, BLAS for the weight gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _mm(x.reshape(-1, x.shape[-1]), weight, bias)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad2d = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        differentiable = torch.is_grad_enabled()  # create_graph=True: stay on differentiable ops
        if ctx.needs_input_grad[0]:
            if differentiable:
                grad_x = grad2d @ weight
            else:
                grad_x = _mm(grad2d, weight.t(), None)  # a transposed view: oneDNN reads it in place
            grad_x = grad_x.view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = grad2d.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2d.sum(0)
        return grad_x, grad_w, grad_b


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None, act: str | None) -> Tensor:
    """oneDNN's product; ``act="gelu"`` applies the GELU as a post-op (inference only)."""
    x2d = x.reshape(-1, x.shape[-1])
    if act == "gelu":
        out = _ONEDNN_LINEAR(x2d, weight, bias, "gelu", [], "none")
    elif _needs_grad(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    else:
        out = _mm(x2d, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def _reference(x: Tensor, weight: Tensor, bias: Tensor | None, act: str | None) -> Tensor:
    out = F.linear(x, weight, bias)
    return F.gelu(out) if act == "gelu" else out


def _native():
    """:mod:`titn_edu.native`, whose ``bias_gelu`` applies the bias and GELU in one pass after the product."""
    from . import native  # imported here: native imports this module

    return native


def _blas(x: Tensor, weight: Tensor, bias: Tensor | None, act: str | None) -> Tensor:
    if act == "gelu" and _native().bias_gelu_applies(x, bias):
        return _native().bias_gelu(F.linear(x, weight), bias)
    return _reference(x, weight, bias, act)


_RUN = {"onednn": _onednn, "blas": _blas}


def _timing_runs(rows: int, weight: Tensor, bias: bool, input_grad: bool, needs_grad: bool, act: str | None):
    """``{kernel: run}`` for :func:`tuning.fastest` on random inputs of this shape (global random stream untouched)."""
    gen = torch.Generator().manual_seed(0)
    out_features, in_features = weight.shape
    x = torch.randn(rows, in_features, dtype=weight.dtype, generator=gen).requires_grad_(input_grad)
    w = (torch.randn(out_features, in_features, dtype=weight.dtype, generator=gen) / in_features**0.5)
    w.requires_grad_(needs_grad)
    b = torch.randn(out_features, dtype=weight.dtype, generator=gen).requires_grad_(needs_grad) if bias else None
    grad = torch.randn(rows, out_features, dtype=weight.dtype, generator=gen) if needs_grad else None
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]

    def run(kernel) -> None:
        if grad is None:
            with torch.no_grad():
                _RUN[kernel](x, w, b, act)
        else:  # training: the forward pass and every gradient the step computes
            with torch.enable_grad():
                torch.autograd.grad(_RUN[kernel](x, w, b, act), inputs, grad)
    return {name: functools.partial(run, name) for name in LINEAR_KERNELS}


def _choose_kernel(x: Tensor, weight: Tensor, bias: Tensor | None, act: str | None) -> str:
    """The faster of :data:`LINEAR_KERNELS` for this shape and machine, timed once (:mod:`titn_edu.tuning`)."""
    rows = x.numel() // x.shape[-1]
    needs_grad = _needs_grad(x, weight, bias)
    input_grad = needs_grad and x.requires_grad
    key = ("linear", rows, tuple(weight.shape), bias is not None, weight.dtype, torch.get_num_threads(),
           needs_grad, input_grad, act)
    setup = functools.partial(_timing_runs, rows, weight, bias is not None, input_grad, needs_grad, act)
    return tuning.fastest(key, LINEAR_KERNELS, setup, repeats=5)


def _check_kernel(kernel: str) -> None:
    if kernel != "auto" and kernel not in LINEAR_KERNELS:
        raise ValueError(f"kernel must be 'auto' or one of {list(LINEAR_KERNELS)}; got {kernel!r}.")


def _fast(x: Tensor, weight: Tensor, bias: Tensor | None, act: str | None, fused: bool, kernel: str) -> Tensor:
    """The fast path (``kernel`` already checked): BLAS where oneDNN does not apply, else the kernel named or timed."""
    if not fused:
        return _reference(x, weight, bias, act)
    if not _onednn_applies(x, weight, bias):
        return _blas(x, weight, bias, act)
    if act == "gelu" and _needs_grad(x, weight, bias):  # the GELU's backward needs the product itself
        if _native().bias_gelu_applies(x, bias):  # the product without its bias, then bias and GELU in one pass
            return _native().bias_gelu(_fast(x, weight, None, None, fused, kernel), bias)
        return F.gelu(_fast(x, weight, bias, None, fused, kernel))
    if kernel == "auto":
        kernel = _choose_kernel(x, weight, bias, act)
    return _RUN[kernel](x, weight, bias, act)


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, fused: bool = True, kernel: str = "auto"
) -> Tensor:
    """:func:`torch.nn.functional.linear` with the CPU fast path described in the module docstring.

    ``kernel``: ``"auto"`` (time the candidates once per shape), or one of :data:`LINEAR_KERNELS`.
    """
    _check_kernel(kernel)
    return _fast(x, weight, bias, None, fused, kernel)


def linear_gelu(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, fused: bool = True, kernel: str = "auto"
) -> Tensor:
    """``GELU(x Wᵀ + b)`` (exact, erf form): the first half of the MLP, eq. 4.

    On CPU in float32 the bias and the GELU are applied in one pass after the product, by
    :func:`titn_edu.native.bias_gelu` (the product is computed without its bias; where the C++
    kernels cannot be built, ``F.gelu`` of the product with its bias). In training that is the
    path, since the GELU's backward pass needs the product itself. When no gradient is needed
    (inference), the ``"onednn"`` kernel can instead apply the GELU to the product before writing
    it; whether that beats BLAS's product followed by the one-pass bias and GELU depends on the
    processor, so it is timed like :func:`linear`. ``fused=False`` is ``F.gelu(F.linear(...))``.
    """
    _check_kernel(kernel)
    return _fast(x, weight, bias, "gelu", fused, kernel)


class Linear(nn.Linear):
    """:class:`torch.nn.Linear` with a CPU fast path (module docstring); parameters and ``state_dict`` unchanged.

    Attributes:
        fused: take the fast path where it applies (default). ``False`` always calls
            :func:`torch.nn.functional.linear`.
        kernel: ``"auto"`` (default): on CPU in float32, the faster of ``"onednn"`` and ``"blas"``,
            timed once per shape (:mod:`titn_edu.tuning`; with timing off, ``"onednn"``). A name
            from :data:`LINEAR_KERNELS` uses that kernel for every call.
    """

    fused: bool = True
    _kernel = "auto"  # a class default, so modules pickled before the attribute existed still load

    @property
    def kernel(self) -> str:
        """The fast path's kernel: ``"auto"`` (default), or one of :data:`LINEAR_KERNELS` to use it everywhere."""
        return self._kernel

    @kernel.setter
    def kernel(self, name: str) -> None:
        _check_kernel(name)
        self._kernel = name

    def forward(self, x: Tensor) -> Tensor:
        return _fast(x, self.weight, self.bias, None, self.fused, self._kernel)  # the kernel was checked when set
