"""The inner (pixel) transformer block as one compiled kernel, forward and backward (``csrc/inner_block.cpp``).

TITN's inner transformer works on thousands of sequences of 16 pixel tokens with about 12
features (2,048 sequences at batch 128). PyTorch runs each inner block as about 70 small operators,
each paying per-row overhead on rows of 12 features; the kernel computes the whole block for one
patch at a time with the patch's 16 × 12 values in registers, and its backward pass recomputes
the patch's activations instead of storing them. ``docs/performance.md`` has the measured gain
and the command that measures it.

This module knows the block only by its parts (``norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.act, mlp.fc2, drop_path``): it imports nothing from the rest of ``titn_edu``.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["TOKENS", "MAX_DIM", "InnerBlockKernel"]

#: The kernel handles sequences of exactly this many tokens (4 × 4 pixels per patch, the paper's geometry).
TOKENS = 16
#: ... of at most this many features (the inner stream; the outer stream is PyTorch's).
MAX_DIM = 64
_MIN_PATCHES_PER_THREAD = 64


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _ordinary_call(x: Tensor) -> bool:
    """A plain float32 CPU tensor, outside autocast, ``torch.compile``, dispatch modes and ``torch.func``.

    PyTorch has no public query for the last two; the private ones are read defensively, and a
    PyTorch without them makes the kernel stand aside.
    """
    if type(x) is not Tensor or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
    transforms = getattr(torch._C, "_are_functorch_transforms_active", None)
    return modes is not None and transforms is not None and not modes() and not transforms()


def _params(block: nn.Module) -> list[Tensor]:
    """The parameters in the kernel's order: LN1 γ β, W_qkv, W_proj b_proj, LN2 γ β, W_fc1 b_fc1, W_fc2 b_fc2."""
    a, m = block.attn, block.mlp
    return [block.norm1.weight, block.norm1.bias, a.qkv.weight, a.proj.weight, a.proj.bias,
            block.norm2.weight, block.norm2.bias, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias]


def fits(block: nn.Module) -> bool:
    """Whether ``block`` is the pre-norm block the kernel computes (LN, bias-free qkv, exact GELU, no dropout)."""
    try:
        n1, n2, attn, mlp = block.norm1, block.norm2, block.attn, block.mlp
        linears = (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)
        dim = n1.normalized_shape
        return (type(n1) is nn.LayerNorm and type(n2) is nn.LayerNorm and dim == n2.normalized_shape
                and len(dim) == 1 and dim[0] <= MAX_DIM and n1.eps == n2.eps and n1.elementwise_affine
                and n2.elementwise_affine and n1.bias is not None and n2.bias is not None
                and all(type(fc) is nn.Linear for fc in linears) and attn.qkv.bias is None
                and None not in (attn.proj.bias, mlp.fc1.bias, mlp.fc2.bias)
                and type(mlp.act) is nn.GELU and mlp.act.approximate == "none" and type(mlp.drop) is nn.Identity
                and attn.qkv.in_features == dim[0] and dim[0] % attn.num_heads == 0
                and 0.0 <= float(block.drop_path.p) < 1.0)
    except AttributeError:
        return False


class InnerBlockKernel:
    """What :func:`titn_edu.accel.accelerate` puts in a block's ``accelerator`` seam.

    ``applies(block, x)``: the call is one the kernel computes exactly — ``x (patches, 16, dim)``
    float32 on CPU, the block as :func:`fits` describes with float32 CPU parameters, its attention
    on its fast path (``fused``, not recording), no hooks, an ordinary call. ``kernel(block, x)``
    then returns ``block(x)``; anything else runs the block's own PyTorch code.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def applies(self, block: nn.Module, x: Tensor) -> bool:
        if x.dim() != 3 or x.shape[1] != TOKENS or x.shape[0] == 0 or not _ordinary_call(x):
            return False
        attn = block.attn
        if not (attn.fused and attn.recorder is None and fits(block)):
            return False
        parts = (block, block.norm1, attn, attn.qkv, attn.proj, block.norm2, block.mlp, block.mlp.fc1,
                 block.mlp.act, block.mlp.fc2, block.drop_path)
        if any(map(_hooked, parts)):
            return False
        return x.shape[2] == attn.qkv.in_features and all(
            p.device.type == "cpu" and p.dtype == torch.float32 for p in _params(block))

    def __call__(self, block: nn.Module, x: Tensor) -> Tensor:
        drop = block.drop_path
        scales = [None, None]
        if drop.p > 0 and drop.training:  # the masks DropPath draws, in the same order: same runs when seeded
            keep = 1.0 - drop.p
            scales = [x.new_empty((x.shape[0], 1, 1)).bernoulli_(keep).view(-1).div_(keep) for _ in range(2)]
        return _InnerBlock.apply(self.lib, x.contiguous(), scales[0], scales[1], block.norm1.eps,
                                 block.attn.num_heads, *[p.contiguous() for p in _params(block)])

    def __repr__(self) -> str:
        return "InnerBlockKernel()"

    def __reduce__(self):  # a pickled or copied model keeps its seam: the library is loaded again on arrival
        from . import _kernel
        return (_kernel, ())


def _addr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads(patches: int) -> int:
    """PyTorch's thread count, fewer for small inputs; depends on nothing else, so sums are reproducible."""
    return max(1, min(torch.get_num_threads(), patches // _MIN_PATCHES_PER_THREAD))


def _pointers(params: list[Tensor]):
    return (ctypes.c_void_p * len(params))(*[p.data_ptr() for p in params])


class _InnerBlock(torch.autograd.Function):
    """Forward and backward of one inner block by the kernel (first derivatives only)."""

    @staticmethod
    def forward(ctx, lib, x, m1, m2, eps, heads, *params):
        patches, _, dim = x.shape
        out = torch.empty_like(x)
        lib.titn_inner_forward(x.data_ptr(), out.data_ptr(), patches, dim, params[9].shape[1], heads, eps,
                               _pointers(params), _addr(m1), _addr(m2), _threads(patches))
        ctx.save_for_backward(x, m1, m2, *params)
        ctx.lib, ctx.eps, ctx.heads = lib, eps, heads
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, m1, m2, *params = ctx.saved_tensors
        patches, _, dim = x.shape
        grad_out, grad_x = grad_out.contiguous(), torch.empty_like(x)
        threads = _threads(patches)
        sizes = [p.numel() for p in params]
        acc = torch.zeros(threads, sum(sizes))  # each thread's parameter gradients, summed below in order
        ctx.lib.titn_inner_backward(x.data_ptr(), grad_out.data_ptr(), grad_x.data_ptr(), patches, dim,
                                    params[9].shape[1], ctx.heads, ctx.eps, _pointers(params), _addr(m1),
                                    _addr(m2), acc.data_ptr(), acc.shape[1], threads)
        flat = acc.sum(0) if threads > 1 else acc[0]
        return (None, grad_x, None, None, None, None, *[g.view_as(p) for g, p in zip(flat.split(sizes), params)])


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the library's two entry points their C signatures."""
    ptr, ptrs = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    dims = [ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float]
    lib.titn_inner_forward.argtypes = [ptr, ptr, *dims, ptrs, ptr, ptr, ctypes.c_int]
    lib.titn_inner_forward.restype = None
    lib.titn_inner_backward.argtypes = [ptr, ptr, ptr, *dims, ptrs, ptr, ptr, ptr, ctypes.c_int64, ctypes.c_int]
    lib.titn_inner_backward.restype = None
    return lib
