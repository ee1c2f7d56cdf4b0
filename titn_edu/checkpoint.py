"""Checkpoints that are safe to load and never half-written.

A checkpoint is one ``torch.save`` file holding only plain types (dicts, lists, strings, numbers,
tensors), so it loads with ``torch.load(..., weights_only=True)``: a file that carries a pickled
Python object (which could run code when unpickled) is **refused**, never executed.

Contents (``load_checkpoint`` returns this dict)::

    format, format_version     "titn_edu.checkpoint", 1
    model                      {"builder": "titn" | "teacher", "kwargs": {...}}  how to rebuild it
    state_dict                 the model's weights
    optimizer, scheduler       their state dicts (or None)
    epoch, metrics, extra      training progress, metrics, anything passed as **extra
    rng                        Python/NumPy/PyTorch RNG states (exact resume)
    versions                   titn_edu, torch, torchvision, python

Saving is atomic (temporary file in the same folder, fsync, ``os.replace``): a crash leaves the
previous checkpoint intact and no temporary file behind.
"""

from __future__ import annotations

import os
import pickle
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .utils import atomic_write, get_rng_state

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "model_spec",
    "build_from_spec",
    "resolve_checkpoint_path",
    "CheckpointError",
    "UnsafeCheckpointError",
]

FORMAT = "titn_edu.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file exists but is not a readable ``titn_edu`` checkpoint (truncated, foreign, wrong version)."""


class UnsafeCheckpointError(CheckpointError):
    """The file carries pickled Python objects; loading it could run code, so it is refused."""


# ----------------------------------------------------------------------------- model <-> spec
def _unwrap(model: nn.Module) -> nn.Module:
    """The original module behind ``torch.compile`` and ``DistributedDataParallel`` (whose state dict keys
    carry a prefix: ``_orig_mod.``, ``module.``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild ``model``: ``{"builder": ..., "kwargs": ...}``, or ``None`` if unknown.

    * a :class:`~titn_edu.model.TITN` → its ``config`` (the constructor's keyword arguments);
    * a teacher from :func:`titn_edu.teachers.build_teacher` → its ``config``
      (``{"name": ..., "num_classes": ..., ...}``, the builder's arguments).
    """
    from .model import TITN

    model = _unwrap(model)
    config = getattr(model, "config", None)
    if isinstance(model, TITN):
        return {"builder": "titn", "kwargs": _plain(dict(model.config), "model.config")}
    if isinstance(config, dict) and isinstance(config.get("name"), str):
        try:
            return {"builder": "teacher", "kwargs": _plain(dict(config), "model.config")}
        except TypeError:  # e.g. a torchvision kwarg holding a class: cannot be stored safely
            return None
    return None


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model (random weights) from :func:`model_spec`'s output."""
    builder, kwargs = spec.get("builder"), dict(spec.get("kwargs") or {})
    if builder == "titn":
        from .model import TITN

        return TITN(**kwargs)
    if builder == "teacher":
        from .teachers import build_teacher

        name = kwargs.pop("name")
        return build_teacher(name, **kwargs)
    raise CheckpointError(f"unknown model builder {builder!r} in checkpoint; expected 'titn' or 'teacher'.")


# ----------------------------------------------------------------------------- plain types
def _plain(obj: Any, where: str) -> Any:
    """Convert ``obj`` to types ``torch.load(weights_only=True)`` accepts, or raise ``TypeError``."""
    if obj is None or isinstance(obj, (bool, torch.Tensor)):
        return obj
    for base in (int, float, str):  # plain-ify subclasses too (e.g. torch's TorchVersion)
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (os.PathLike, torch.device, torch.dtype)):
        return str(obj)
    raise TypeError(
        f"{where} has type {type(obj).__name__}, which a safe (weights-only) checkpoint cannot hold. "
        f"Store plain values instead: dicts, lists, str, int, float, bool, None or tensors."
    )


def _versions() -> dict[str, str]:
    import torchvision

    from . import __version__

    return {
        "titn_edu": str(__version__),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Atomically write ``model`` (weights + how to rebuild it) and the training state to ``path``.

    ``extra`` keyword arguments are stored under ``"extra"``; like ``metrics`` they must be plain
    values (dicts, lists, str, numbers, tensors). Returns the path written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise ValueError(f"epoch must be a whole number >= 0 (epochs completed) or None; got {epoch!r}.")
    if metrics is not None and not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of plain values (or None); got {type(metrics).__name__}.")
    spec = model_spec(model)
    if spec is None:
        warnings.warn(
            f"{type(_unwrap(model)).__name__} has no `config` telling how to rebuild it, so load_model() will not "
            f"work on this checkpoint (load_checkpoint() + model.load_state_dict() will). Build models with "
            f"titn_edu.build_model or titn_edu.teachers.build_teacher to get one.",
            stacklevel=2,
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec,
        "model_class": type(_unwrap(model)).__name__,
        "state_dict": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                       for k, v in _unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": None if epoch is None else int(epoch),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "extra": _plain(extra, "extra"),
        "rng": get_rng_state(),
        "versions": _versions(),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def resolve_checkpoint_path(path: str | os.PathLike, *, prefer: tuple[str, ...] = ("best.pt", "last.pt")) -> Path:
    """``path`` itself if it is a file; for a folder, its first existing file among ``prefer``."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in prefer:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no checkpoint in folder {str(path)!r}: expected one of {list(prefer)} there.")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}: the file does not exist.")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safely, ``weights_only=True``).

    ``path`` is a file, or a run folder (then ``best.pt``, else ``last.pt``). Raises
    ``FileNotFoundError`` if it does not exist, :class:`UnsafeCheckpointError` if it carries
    pickled Python objects (never executed), :class:`CheckpointError` if it is truncated or not a
    ``titn_edu`` checkpoint.
    """
    path = resolve_checkpoint_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol" notices on foreign files
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise UnsafeCheckpointError(
                f"refusing to load {str(path)!r}: it contains pickled Python objects, which could run arbitrary "
                f"code when loaded. titn_edu checkpoints never need them. Only if you fully trust the file's "
                f"origin, inspect it yourself with torch.load(path, weights_only=False)."
            ) from None
        raise CheckpointError(f"could not read {str(path)!r}: not a PyTorch checkpoint ({err}).") from None
    except PermissionError:
        raise
    except (RuntimeError, EOFError, KeyError, ValueError, AttributeError, IndexError, OSError) as err:
        raise CheckpointError(
            f"could not read {str(path)!r}: the file is truncated, corrupted or not a PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unexpected end of file'})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch file but not a titn_edu checkpoint (no format={FORMAT!r} marker). "
            f"If it is a bare state_dict, load it with model.load_state_dict(torch.load(path, weights_only=True))."
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}; this titn_edu reads up to "
            f"{FORMAT_VERSION}. Upgrade titn_edu."
        )
    return payload


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the model stored in a checkpoint, load its weights and return it in ``eval()`` mode."""
    ckpt = load_checkpoint(path, map_location=map_location)
    spec = ckpt.get("model")
    if spec is None:
        raise CheckpointError(
            f"{str(path)!r} does not record how to rebuild its {ckpt.get('model_class', 'model')}; build the "
            f"model yourself and call model.load_state_dict(load_checkpoint(path)['state_dict'])."
        )
    try:
        model = build_from_spec(spec)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        detail = " ".join(line.strip() for line in str(err).splitlines())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(
            f"{str(path)!r} cannot be rebuilt: its model description or weights do not fit this titn_edu "
            f"({type(err).__name__}: {detail}). Was it saved by another version or edited?"
        ) from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
