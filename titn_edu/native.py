"""Fused C++ kernels on CPU, built on first use: the inner (pixel) transformer block, and the MLP's bias + GELU.

TITN's inner transformer works on 2,048 sequences of 16 pixel tokens with 12 features (batch
128). PyTorch runs each inner block as about 70 small operators, each paying per-row overhead on
rows of 12 features, and the inner stream ends up costing half as much time as the outer
transformer while doing a tenth of its arithmetic (``docs/benchmarks.md``). The kernel in
``csrc/inner_block.cpp`` computes a whole block, forward and backward, one patch at a time with
the patch's 16 × 12 values in registers — 2–4× faster than the operators it replaces
(``benchmarks/native_inner_block.py``).

A second, smaller kernel, ``csrc/bias_gelu.cpp`` (:func:`bias_gelu`), adds the first MLP layer's bias
and applies the GELU in one pass over the hidden activations, and computes both gradients in one
more; :class:`titn_edu.Mlp` takes it through :func:`titn_edu.linear.linear_gelu`. Both use the
GELU of ``csrc/vmath.h``, through a rational approximation of the normal CDF rather than erf
(``scripts/fit_gelu_phi.py``).

* **Built on first use**, with the C++ compiler it finds (``$CXX``, else ``c++``, ``g++`` or
  ``clang++``), into one library for this processor (``-march=native``) with OpenMP, in a few seconds. In
  the process its OpenMP runtime is PyTorch's own, so it runs on the threads PyTorch uses
  (:func:`torch.get_num_threads`), one pool for both. The library is kept
  in the cache folder of :mod:`titn_edu.tuning` under a name that hashes the source, the compiler
  and the processor, so later processes load it at once. Without a compiler, or if the build
  fails, a single warning says so and every block runs on PyTorch operators, as before.
* **Taken automatically** by :class:`titn_edu.TransformerBlock` where it applies: a CPU float32
  tensor ``(patches, 16, dim)``, the block's standard modules with their fast paths on, no hooks
  and no autocast, ``torch.compile``, dispatch mode (``FlopCounterMode``) or ``torch.func``
  transform active (:func:`applies`). Anything else takes the PyTorch path.
* **Switched off** per block with ``TransformerBlock.fused = False``, per model with
  :func:`titn_edu.set_fast_path` (``False`` is the reference path), everywhere with
  ``titn_edu.native.enabled = False``, or with ``TITN_EDU_NATIVE=0`` in the environment before
  import.

Drop path (stochastic depth) is supported: the masks are drawn exactly as :class:`DropPath`
draws them, so a seeded run takes the same masks on either path. ``tests/test_native.py`` checks
outputs and every gradient against the PyTorch path, with and without drop path, and
``benchmarks/native_inner_block.py`` times the two.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import tuning
from .attention import MultiHeadAttention
from .layers import DropPath, Mlp
from .linear import Linear
from .utils import cpu_name

__all__ = ["enabled", "available", "applies", "inner_block", "bias_gelu_applies", "bias_gelu", "library_path", "TOKENS"]

#: Use the fused kernel where it applies (``True``, the default) or never.
enabled: bool = os.environ.get("TITN_EDU_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")

#: The kernel handles sequences of exactly this many pixel tokens (the paper's 4 × 4 pixels per patch).
TOKENS = 16

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = (_CSRC / "inner_block.cpp", _CSRC / "bias_gelu.cpp")  # compiled into one library
_HEADERS = (_CSRC / "vmath.h",)
_FLAGS = ("-std=c++17", "-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
#: Tried in order: for this processor with OpenMP (the runtime PyTorch loaded is shared, not a second
#: one), then without OpenMP (one thread), then for any processor of the architecture.
_VARIANTS = (("-march=native", "-fopenmp"), ("-march=native",), ())
_MIN_PATCHES_PER_THREAD = 64

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_path: Path | None = None
_failure: str | None = None  # why the kernel is unavailable, once known


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or cxx
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _build_dir() -> Path:
    cache = tuning.cache_file()
    if cache is not None:
        return cache.parent
    return Path(tempfile.gettempdir()) / f"titn_edu-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _compile(cxx: str, source: bytes, out: Path) -> str | None:
    """Build the shared library at ``out`` (atomically); ``None`` on success, else the compiler's complaint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    for arch in _VARIANTS:
        fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".so.tmp", dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cxx, *_FLAGS, *arch, *map(str, _SOURCES), "-o", tmp],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(tmp, out)
                return None
            error = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            error = error[0]
        except (OSError, subprocess.SubprocessError) as exc:
            error = str(exc)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return error


def _load() -> ctypes.CDLL | None:
    """The kernel library, built if needed; ``None`` (and one warning) if it cannot be had."""
    global _lib, _path, _failure
    with _lock:
        if _lib is not None or _failure is not None:
            return _lib
        cxx = _compiler()
        if cxx is None:
            _failure = "no C++ compiler found (set CXX, or install g++ or clang++)"
        else:
            source = b"\0".join(f.read_bytes() for f in (*_SOURCES, *_HEADERS))
            key = hashlib.sha256(b"\0".join([
                source, " ".join(_FLAGS).encode(), _compiler_version(cxx).encode(),
                cpu_name(ids=True).encode(), platform.machine().encode(),
            ])).hexdigest()[:16]
            path = _build_dir() / f"titn_kernels-{key}.so"
            try:
                if not path.exists():
                    problem = _compile(cxx, source, path)
                    if problem is not None:
                        _failure = f"{Path(cxx).name} failed: {problem}"
                if _failure is None:
                    lib = ctypes.CDLL(str(path))
                    _declare(lib)
                    _lib, _path = lib, path
            except OSError as exc:
                _failure = f"could not build or load {path}: {exc}"
        if _failure is not None:
            warnings.warn(
                f"titn_edu: the fused C++ kernels are not available ({_failure}); TITN's inner "
                "transformer and the MLPs' bias and GELU run on PyTorch operators instead, the inner "
                "transformer about 2x slower on CPU. "
                "Set TITN_EDU_NATIVE=0 to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return _lib


def _declare(lib: ctypes.CDLL) -> None:
    ptr, ptrs = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    dims = [ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float]
    lib.titn_inner_forward.argtypes = [ptr, ptr, *dims, ptrs, ptr, ptr, ctypes.c_int]
    lib.titn_inner_forward.restype = None
    lib.titn_inner_backward.argtypes = [ptr, ptr, ptr, *dims, ptrs, ptr, ptr, ptr, ctypes.c_int64, ctypes.c_int]
    lib.titn_inner_backward.restype = None
    lib.titn_bias_gelu_forward.argtypes = [ptr, ptr, ptr, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.titn_bias_gelu_forward.restype = None
    lib.titn_bias_gelu_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.titn_bias_gelu_backward.restype = None


def available() -> bool:
    """Whether the kernel can be used here (builds it on first call; ``False`` when switched off)."""
    return enabled and _load() is not None


def library_path() -> Path | None:
    """Where the built kernel library is, or ``None`` before the first build or when unavailable."""
    return _path


def _plain(*modules: nn.Module) -> bool:
    """No hooks anywhere that expect the submodules to run one by one."""
    from torch.nn.modules import module as m

    if m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks:
        return False
    return not any(
        mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks or mod._backward_pre_hooks
        for mod in modules
    )


def applies(block: nn.Module, x: Tensor) -> bool:
    """Whether :func:`inner_block` computes ``block(x)`` here; see the module docstring for the conditions."""
    if not enabled or type(x) is not Tensor or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if x.dim() != 3 or x.shape[1] != TOKENS or x.shape[0] == 0:
        return False
    if (torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
            or torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active()):
        return False
    norm1, attn, norm2, mlp = (getattr(block, n, None) for n in ("norm1", "attn", "norm2", "mlp"))
    drop = getattr(block, "drop_path", None)
    if not (type(norm1) is nn.LayerNorm and type(norm2) is nn.LayerNorm and type(attn) is MultiHeadAttention
            and type(mlp) is Mlp and type(drop) is DropPath):
        return False
    dim = x.shape[2]
    if (norm1.normalized_shape != (dim,) or norm2.normalized_shape != (dim,) or norm1.weight is None
            or norm1.bias is None or norm2.weight is None or norm2.bias is None or norm1.eps != norm2.eps):
        return False
    qkv, proj, fc1, act, fc2 = attn.qkv, attn.proj, mlp.fc1, mlp.act, mlp.fc2
    if not (attn.fused and attn.kernel == "auto" and attn._recorder is None and attn.dim == dim):
        return False
    if not all(type(fc) is Linear and fc.fused and fc.kernel == "auto" for fc in (qkv, proj, fc1, fc2)):
        return False
    if qkv.bias is not None or proj.bias is None or fc1.bias is None or fc2.bias is None:
        return False
    if type(act) is not nn.GELU or act.approximate != "none" or type(mlp.drop) is not nn.Identity:
        return False
    params = _params(block)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return False
    return _plain(norm1, attn, qkv, proj, norm2, mlp, fc1, act, fc2, drop) and available()


def _params(block: nn.Module) -> list[Tensor]:
    """The parameters in the kernel's order: LN1 γ β, W_qkv, W_proj b_proj, LN2 γ β, W_fc1 b_fc1, W_fc2 b_fc2."""
    a, m = block.attn, block.mlp
    return [block.norm1.weight, block.norm1.bias, a.qkv.weight, a.proj.weight, a.proj.bias,
            block.norm2.weight, block.norm2.bias, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias]


def inner_block(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)`` for a :class:`titn_edu.TransformerBlock` on ``x (patches, 16, dim)``, by the fused kernel.

    Call it only where :func:`applies` is true (``TransformerBlock.forward`` does).
    """
    drop = block.drop_path
    scales = [None, None]
    if drop.p > 0 and drop.training:  # the masks DropPath would draw, in the same order
        keep = 1.0 - drop.p
        scales = [x.new_empty((x.shape[0], 1, 1)).bernoulli_(keep).view(-1).div_(keep) for _ in range(2)]
    return _InnerBlock.apply(x.contiguous(), scales[0], scales[1], block.norm1.eps, block.attn.num_heads,
                             *[p.contiguous() for p in _params(block)])


def _addr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads(patches: int) -> int:
    """:func:`torch.get_num_threads`, fewer for small inputs; the result depends on nothing else (reproducible sums)."""
    return max(1, min(torch.get_num_threads(), patches // _MIN_PATCHES_PER_THREAD))


class _InnerBlock(torch.autograd.Function):
    """Forward and backward of one inner block by the kernel; the backward recomputes the activations."""

    @staticmethod
    def forward(ctx, x, m1, m2, eps, heads, *params):
        patches, _, dim = x.shape
        hidden = params[9].shape[1]
        out = torch.empty_like(x)
        prm = (ctypes.c_void_p * len(params))(*[p.data_ptr() for p in params])
        _lib.titn_inner_forward(x.data_ptr(), out.data_ptr(), patches, dim, hidden, heads, eps, prm,
                                _addr(m1), _addr(m2), _threads(patches))
        ctx.save_for_backward(x, m1, m2, *params)
        ctx.eps, ctx.heads = eps, heads
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, m1, m2, *params = ctx.saved_tensors
        patches, _, dim = x.shape
        hidden = params[9].shape[1]
        grad_out = grad_out.contiguous()
        grad_x = torch.empty_like(x)
        threads = _threads(patches)
        sizes = [p.numel() for p in params]
        acc = torch.zeros(threads, sum(sizes))  # each thread's parameter gradients, summed below in order
        prm = (ctypes.c_void_p * len(params))(*[p.data_ptr() for p in params])
        _lib.titn_inner_backward(x.data_ptr(), grad_out.data_ptr(), grad_x.data_ptr(), patches, dim, hidden,
                                 ctx.heads, ctx.eps, prm, _addr(m1), _addr(m2), acc.data_ptr(), acc.shape[1],
                                 threads)
        flat = acc.sum(0) if threads > 1 else acc[0]
        grads = [g.view_as(p) for g, p in zip(flat.split(sizes), params)]
        return (grad_x, None, None, None, None, *grads)


# ------------------------------------------------------------------ bias + GELU (the MLP's middle)
def bias_gelu_applies(x: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`bias_gelu` takes the kernel for a product of ``x`` (its input) and this bias."""
    return (
        enabled
        and bias is not None
        and type(x) is Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and bias.device.type == "cpu"
        and bias.dtype == torch.float32
        and bias.dim() == 1
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
        and available()
    )


def bias_gelu(z: Tensor, bias: Tensor) -> Tensor:
    """``GELU(z + bias)``, exact GELU (eq. 4–5), in one pass: the middle of the MLP.

    ``z (..., hidden)`` is the first layer's product without its bias (``x @ W.T``); the kernel in
    ``csrc/bias_gelu.cpp`` adds the bias and applies the GELU while reading it once, and its
    backward pass computes the gradients of ``z`` and ``bias`` in one more pass (in PyTorch the
    two take four passes over the hidden activations). :func:`titn_edu.linear.linear_gelu` and
    so :class:`titn_edu.Mlp` use it on CPU where :func:`bias_gelu_applies`; elsewhere this is
    ``F.gelu(z + bias)``. A second derivative (``create_graph=True``) is taken with PyTorch
    operators.
    """
    if z.dim() == 0 or z.shape[-1] != bias.shape[-1] or not bias_gelu_applies(z, bias):
        return F.gelu(z + bias)
    return _BiasGelu.apply(z.contiguous(), bias.contiguous())


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, bias):
        cols = z.shape[-1]
        rows = z.numel() // cols if cols else 0
        out = torch.empty_like(z)
        if rows:
            _lib.titn_bias_gelu_forward(z.data_ptr(), bias.data_ptr(), out.data_ptr(), rows, cols, _threads(rows))
        ctx.save_for_backward(z, bias)
        return out

    @staticmethod
    def backward(ctx, grad):
        z, bias = ctx.saved_tensors
        cols = z.shape[-1]
        rows = z.numel() // cols if cols else 0
        if torch.is_grad_enabled() or not rows:  # create_graph=True: differentiable operators
            u = z + bias
            cdf = 0.5 * (1.0 + torch.erf(u * 0.5**0.5))
            grad_z = grad * (cdf + u * torch.exp(-0.5 * u * u) * (2.0 * math.pi) ** -0.5)
            return grad_z, grad_z.reshape(-1, cols).sum(0)
        grad = grad.contiguous()
        grad_z = torch.empty_like(z)
        threads = _threads(rows)
        grad_b = torch.zeros(threads, cols)  # each thread's column sums, added below in order
        _lib.titn_bias_gelu_backward(grad.data_ptr(), z.data_ptr(), bias.data_ptr(), grad_z.data_ptr(),
                                     grad_b.data_ptr(), rows, cols, threads)
        return grad_z, grad_b.sum(0) if threads > 1 else grad_b[0]
