"""The fully connected layer ``y = x Wᵀ + b`` (the FC of eq. 4–5, and every projection), with a CPU fast path.

:class:`Linear` is :class:`torch.nn.Linear` (same parameters, same ``state_dict``, same maths) whose
forward, on CPU in float32, calls oneDNN's matrix multiply instead of the BLAS one
``torch.nn.functional.linear`` uses there. On the shapes TITN runs (e.g. 2,304 outer tokens × 192
features, or 32,768 pixel tokens × 12) it is about 10 % (outer) to 2× (inner) faster for the
forward pass and the input gradient (``benchmarks/linear_kernels.py``); the weight gradient stays
with the BLAS kernel, which is faster for it. Results agree with :func:`torch.nn.functional.linear` to float32 rounding
(``tests/test_fast_path.py``).

It falls back to :func:`torch.nn.functional.linear` — the explicit path, and the one every other
device takes — whenever the fast one does not apply: another device or dtype, autocast,
``torch.compile`` tracing, a dispatch mode such as :class:`torch.utils.flop_counter.FlopCounterMode`,
``torch.func`` transforms, a build without oneDNN, or ``fused = False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "linear", "linear_gelu", "onednn_linear_available"]


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


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, fused: bool = True) -> Tensor:
    """:func:`torch.nn.functional.linear` with the CPU fast path described in the module docstring."""
    if not fused or not _onednn_applies(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return _mm(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, fused: bool = True) -> Tensor:
    """``GELU(x Wᵀ + b)`` (exact, erf form): the first half of the MLP, eq. 4.

    When no gradient is needed (inference) and the fast path applies, oneDNN applies the GELU to
    the product before writing it (one pass over the hidden activations instead of two). Training
    keeps the two steps, because the GELU's backward pass needs the product itself.
    """
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if fused and not needs_grad and _onednn_applies(x, weight, bias):
        out = _ONEDNN_LINEAR(x.reshape(-1, x.shape[-1]), weight, bias, "gelu", [], "none")
        return out.view(*x.shape[:-1], weight.shape[0])
    return F.gelu(linear(x, weight, bias, fused=fused))


class Linear(nn.Linear):
    """:class:`torch.nn.Linear` with a CPU fast path (module docstring); parameters and ``state_dict`` unchanged.

    Attributes:
        fused: take the fast path where it applies (default). ``False`` always calls
            :func:`torch.nn.functional.linear`.
    """

    fused: bool = True

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, fused=self.fused)
