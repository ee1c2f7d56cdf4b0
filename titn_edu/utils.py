"""Small helpers shared by training, checkpoints and the command line.

* :func:`seed_everything` — one call makes a CPU run repeatable (Python, NumPy and PyTorch RNGs).
* :func:`get_rng_state` / :func:`set_rng_state` — capture and restore those RNGs, as plain
  types that a ``weights_only`` checkpoint can hold (this is what makes ``resume`` exact).
* :func:`resolve_device` — ``"auto"`` → CUDA, then Apple MPS, then CPU.
* :func:`atomic_write` / :func:`save_json` — write a file so that it is either the old or the
  new version, never half-written (temporary file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import random
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "resolve_device",
    "atomic_write",
    "save_json",
    "to_jsonable",
    "cpu_name",
    "usable_cores",
]


@functools.cache
def cpu_name(*, ids: bool = False) -> str:
    """The processor's model name (``/proc/cpuinfo``, else :mod:`platform`); ``ids=True`` adds family, model and stepping.

    The ids tell processors apart that a hypervisor names alike (e.g. "Intel(R) Xeon(R) Processor").
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep or not key.strip():
                    continue
                if key.strip() in fields:  # the first processor is enough
                    break
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if ids and "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')}, stepping {fields.get('stepping', '?')})"
    return name


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU); return ``seed``.

    Two CPU runs started with the same seed and the same arguments produce identical results on
    one machine.
    (On GPUs some kernels stay non-deterministic unless
    ``torch.use_deterministic_algorithms(True)`` is also set.)
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer; got {seed!r} ({type(seed).__name__}).")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32); got {seed}.")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def get_rng_state() -> dict[str, Any]:
    """The state of every random number generator, as plain types and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`get_rng_state`'s output (missing parts are left alone)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` → ``cuda`` if available, else ``mps``, else ``cpu``; other values are checked."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:0' or 'mps'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here; use device='auto' or 'cpu'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was requested but Apple MPS is not available here; use device='auto' or 'cpu'.")
    return dev


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None] | bytes | str) -> Path:
    """Write ``path`` atomically: readers see the old file or the complete new one, never a part.

    ``write`` is the content (``bytes``/``str``) or a function that writes into a binary file
    object. The data go to a temporary file in the same folder, are flushed and fsync'ed, then
    ``os.replace`` swaps the file in. On any error the temporary file is removed and the old
    file is untouched. A process killed mid-write (SIGKILL, power loss) cannot clean up: its
    temporary file ``.NAME.PID.*.tmp`` is removed by the next write of ``path``.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(path.parent)!r} is a file, not a folder.")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder; give a file name such as {str(path / 'last.pt')!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    # A killed writer cannot clean up after itself: its temporary file (named after its PID) is
    # removed by the next write of the same path, above.
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, str):
                f.write(write.encode("utf-8"))
            elif isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); harmless where unsupported
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def _temp_name(path: Path) -> str:
    """``.NAME.PID.RANDOM.tmp`` beside ``path`` (the PID lets a later write spot leftovers of dead writers)."""
    return str(path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"))


def _remove_stale_temps(path: Path) -> None:
    """Delete ``path``'s temporary files left by writers that no longer run (e.g. killed mid-save)."""
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        parts = stale.name[len(path.name) + 2:].split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)  # no error: that writer still runs (and may be writing right now)
            continue
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            stale.unlink()
        except OSError:
            pass


def to_jsonable(obj: Any) -> Any:
    """Tensors, NumPy values, paths and tuples → JSON types; non-finite floats → ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write`)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text)
