"""Build the kernels' shared library with the C++ compiler found here, and load it only when it is safe.

Loading a shared library runs its code, so :func:`load` loads only a library that this user
built, from a folder only this user can write:

* the folder is ``$TITN_EDU_CACHE_DIR``, else ``$XDG_CACHE_HOME/titn_edu``, else
  ``~/.cache/titn_edu``; with ``TITN_EDU_CACHE_DIR`` set empty, a fresh private temporary folder
  for this process only, deleted at exit. It is created with mode ``0o700``;
* before ``ctypes`` loads anything, the folder and the library must be owned by this user,
  writable by nobody else, and not symbolic links, and the library's SHA-256 must equal the one
  recorded beside it when it was built here. A library that fails any of these is refused (never
  loaded): a planted or changed one is built again, an unsafe folder is reported with the fix.

The library's name hashes the sources, the flags, the compiler and the processor, so a change of
any of them builds a new one. Nothing is written anywhere until a model is accelerated.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["UnsafeLibraryError", "cache_dir", "library_name", "build", "load", "check_private"]

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "inner_block.cpp",)
HEADERS = (CSRC / "vmath.h",)
FLAGS = ("-std=c++17", "-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
         "-fPIC", "-shared")
#: Tried in order: with OpenMP (PyTorch's own runtime is shared, not a second one), then without (one thread).
OPENMP = (("-fopenmp",), ())


class UnsafeLibraryError(RuntimeError):
    """A folder or library that must not be loaded from (wrong owner, writable by others, link, changed)."""


def cache_dir() -> Path:
    """The folder the library is built in (module docstring); created private on first call."""
    folder = os.environ.get("TITN_EDU_CACHE_DIR")
    if folder is not None and not folder.strip():
        return _process_dir()
    if folder is None:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "titn_edu"
    path = Path(folder).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path)
    return path


_PROCESS_DIR: Path | None = None


def _process_dir() -> Path:
    global _PROCESS_DIR
    if _PROCESS_DIR is None:
        _PROCESS_DIR = Path(tempfile.mkdtemp(prefix="titn_edu-accel-"))  # mode 0o700, unpredictable name
        atexit.register(shutil.rmtree, _PROCESS_DIR, ignore_errors=True)
    return _PROCESS_DIR


def check_private(path: Path) -> None:
    """Raise :class:`UnsafeLibraryError` unless ``path`` is this user's, writable by no one else, and no link."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeLibraryError(f"{path} is a symbolic link; remove it or set TITN_EDU_CACHE_DIR to another folder.")
    if info.st_uid != os.getuid():
        raise UnsafeLibraryError(f"{path} belongs to user id {info.st_uid}, not to you ({os.getuid()}); "
                                 f"set TITN_EDU_CACHE_DIR to a folder of your own.")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeLibraryError(f"{path} can be written by other users (mode {stat.filemode(info.st_mode)}); "
                                 f"run `chmod go-w {path}` or set TITN_EDU_CACHE_DIR to a private folder.")


def compiler() -> str | None:
    """``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` on the ``PATH``."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def library_name(cxx: str) -> str:
    """``titn_accel-<hash>.so``: the hash covers the sources, flags, compiler version and processor."""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = [f.read_bytes() for f in (*SOURCES, *HEADERS)]
    parts += [" ".join(FLAGS).encode(), version.encode(), platform.machine().encode(), _processor().encode()]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()
    return f"titn_accel-{digest[:16]}.so"


def _processor() -> str:
    """The processor's model name and ids (``-march=native`` builds for exactly this processor)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f.read().split("\n\n")[0].splitlines()
                     if line.split(":")[0].strip() in ("vendor_id", "cpu family", "model", "model name", "stepping")]
        return "; ".join(lines)
    except OSError:
        return platform.processor()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(cxx: str, out: Path) -> str | None:
    """Compile :data:`SOURCES` into ``out`` and record its SHA-256 beside it; ``None`` on success, else why not."""
    error = "no variant was tried"
    for extra in OPENMP:
        fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cxx, *FLAGS, *extra, *map(str, SOURCES), "-o", tmp],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                os.chmod(tmp, 0o700)
                Path(tmp + ".sha256").write_text(_sha256(Path(tmp)))
                os.replace(tmp + ".sha256", f"{out}.sha256")
                os.replace(tmp, out)
                return None
            error = ((proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as exc:
            error = str(exc)
        finally:
            for leftover in (tmp, tmp + ".sha256"):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return error


def verify(path: Path) -> None:
    """Raise :class:`UnsafeLibraryError` unless ``path`` may be loaded (module docstring)."""
    check_private(path.parent)
    check_private(path)
    record = Path(f"{path}.sha256")
    if not record.exists():
        raise UnsafeLibraryError(f"{path} was not built here (no {record.name} beside it); refused.")
    check_private(record)
    if record.read_text().strip() != _sha256(path):
        raise UnsafeLibraryError(f"{path} changed since it was built (its SHA-256 differs from {record.name}); "
                                 f"refused.")


def load() -> tuple[ctypes.CDLL, Path]:
    """Build (if needed), verify and load the library; raise ``RuntimeError`` saying why it cannot be had."""
    cxx = compiler()
    if cxx is None:
        named = f"CXX={os.environ['CXX']!r} is not a program here; " if os.environ.get("CXX") else ""
        raise RuntimeError(f"no C++ compiler found ({named}set CXX, or install g++ or clang++)")
    path = cache_dir() / library_name(cxx)
    if path.exists():
        try:
            verify(path)
        except UnsafeLibraryError:
            path.unlink()  # planted or changed: never loaded; build our own in its place
    if not path.exists():
        problem = build(cxx, path)
        if problem is not None:
            raise RuntimeError(f"{Path(cxx).name} failed: {problem}")
    verify(path)
    return ctypes.CDLL(str(path)), path


def cpu_supported() -> bool:
    """x86-64 with AVX2 and FMA (PyTorch's own CPU capability), on Linux or macOS: where the kernel was measured."""
    return (os.name == "posix" and platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
