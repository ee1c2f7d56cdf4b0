"""What a submission may not do: run the library's own answer, or run for ever.

Two guards, used by :meth:`titn_edu.checks.harness.Case.call` around every call into a student's code
(and usable on their own, e.g. in a grading test):

* :func:`forbid` names the library's own implementation of an exercise (functions, classes,
  modules, builtins); :meth:`Forbidden.watching` records every call into any of it while the
  student's code runs. Calls are matched by the *code* that runs, not by the name it was reached
  through, so a submission that calls the library under another name (``from titn_edu.attention
  import scaled_dot_product_attention as sdpa``), wraps it (a lambda, ``functools.partial``, a
  method that calls it), subclasses it (``class Mine(titn_edu.TITNBlock)``) or re-imports its module
  is caught like a direct call; :meth:`Forbidden.subclassed_by` catches a subclass before it runs.
* :func:`time_limit` interrupts a block that runs longer than a wall-clock limit with
  :class:`TimeLimitExceeded` (a ``BaseException``, so a student's ``except Exception`` does not
  swallow it). Limits nest: an inner limit never cancels an outer one.

The watcher is a profile hook (``sys.setprofile``, also installed for threads started meanwhile); it
only looks, it never changes what the student's code computes.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["Forbidden", "forbid", "NOTHING", "time_limit", "TimeLimitExceeded", "can_interrupt"]

_Key = tuple[str, int, str]  # (file, first line, name) of a code object: stable across re-imports
_THIS_FILE = os.path.abspath(__file__)


# ------------------------------------------------------------------------- forbidden code
@dataclass(frozen=True)
class Forbidden:
    """The library's own version of an exercise: code a submission may not run.

    Build it with :func:`forbid`. ``codes`` maps a function's code (file, first line, name) to the
    name shown to the student; ``folders`` maps a module's file or a package's folder to its name;
    ``builtins`` maps ``id()`` of a C function to its name (``kept`` holds those objects alive);
    ``classes`` are the classes a submission may not subclass.
    """

    codes: dict[_Key, str] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    builtins: dict[int, str] = field(default_factory=dict)
    classes: tuple[type, ...] = ()
    kept: tuple[Any, ...] = ()

    def __or__(self, other: "Forbidden") -> "Forbidden":
        return Forbidden({**self.codes, **other.codes}, {**self.folders, **other.folders},
                         {**self.builtins, **other.builtins}, self.classes + other.classes, self.kept + other.kept)

    def subclassed_by(self, cls: Any) -> str | None:
        """The name of the forbidden class ``cls`` is (or derives from), if any."""
        if not inspect.isclass(cls):
            return None
        return next((_name(c) for c in self.classes if issubclass(cls, c)), None)

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[str]]:
        """Record (in the yielded list, in call order) every forbidden call made inside the block."""
        seen: list[str] = []
        if not (self.codes or self.folders or self.builtins):
            yield seen
            return
        hook = _Watcher(self, seen)
        old_profile, old_thread_profile = sys.getprofile(), threading.getprofile()
        hook.chained = old_profile
        threading.setprofile(hook)
        sys.setprofile(hook)
        try:
            yield seen
        finally:
            sys.setprofile(old_profile)
            threading.setprofile(old_thread_profile)


#: Nothing is forbidden (the default of a case).
NOTHING = Forbidden()


class _Watcher:
    """The profile hook: note the name of every forbidden function entered."""

    def __init__(self, forbidden: Forbidden, seen: list[str]):
        self.forbidden, self.seen = forbidden, seen
        self.by_file: dict[str, str | None] = {}
        self.chained: Any = None

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        name = None
        if event == "call":
            code = frame.f_code
            name = self.forbidden.codes.get((code.co_filename, code.co_firstlineno, code.co_name))
            if name is None:
                module = self._module(code.co_filename)
                name = None if module is None else f"{module}.{getattr(code, 'co_qualname', code.co_name)}"
        elif event == "c_call":
            name = self.forbidden.builtins.get(id(arg))
        if name is not None and name not in self.seen:
            self.seen.append(name)
        if self.chained is not None:
            self.chained(frame, event, arg)

    def _module(self, filename: str) -> str | None:
        """The dotted name of a forbidden module the file belongs to, or ``None``."""
        if filename not in self.by_file:
            self.by_file[filename] = _module_of(os.path.abspath(filename), self.forbidden.folders)
        return self.by_file[filename]


def _module_of(path: str, folders: dict[str, str]) -> str | None:
    if path == _THIS_FILE:  # the guards themselves (leaving a `with`, the alarm handler) are not the student's
        return None
    for prefix, module in folders.items():
        if path == prefix:
            return module
        if prefix.endswith(os.sep) and path.startswith(prefix):
            rel = os.path.splitext(path[len(prefix):])[0].split(os.sep)
            return ".".join([module] + [part for part in rel if part != "__init__"])
    return None


def forbid(*things: Any) -> Forbidden:
    """A :class:`Forbidden` made of functions, classes (every method they define), modules (every
    function in their file; a package: every file under its folder) and C functions (builtins).

    A thing may be given as ``(thing, name)`` to show the student the name they know it by.
    """
    codes: dict[_Key, str] = {}
    folders: dict[str, str] = {}
    builtins: dict[int, str] = {}
    classes: list[type] = []
    for thing in things:
        shown = None
        if isinstance(thing, tuple):  # (thing, the name a student knows it by)
            thing, shown = thing
        if inspect.ismodule(thing):
            path = os.path.abspath(thing.__file__)
            is_package = os.path.basename(path) == "__init__.py"
            folders[os.path.dirname(path) + os.sep if is_package else path] = shown or thing.__name__
            classes += [c for c in vars(thing).values() if inspect.isclass(c) and c.__module__ == thing.__name__]
        elif inspect.isclass(thing):
            classes.append(thing)
            for attr, value in vars(thing).items():
                for fn in _functions_of(value):
                    codes[_key(fn.__code__)] = f"{_name(thing)}.{attr}"
        elif isinstance(thing, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            builtins[id(thing)] = shown or _name(thing)
        elif inspect.isfunction(thing):
            codes[_key(thing.__code__)] = shown or _name(thing)
        else:
            raise TypeError(f"forbid() takes functions, classes, modules or builtins; got {thing!r}.")
    return Forbidden(codes, folders, builtins, tuple(classes), tuple(t[0] if isinstance(t, tuple) else t for t in things))


def _functions_of(value: Any) -> list[types.FunctionType]:
    """The plain functions behind a class attribute (method, static/class method, property)."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if inspect.isfunction(f)]
    return [value] if inspect.isfunction(value) else []


def _key(code: types.CodeType) -> _Key:
    return (code.co_filename, code.co_firstlineno, code.co_name)


def _name(obj: Any) -> str:
    """``module.qualname`` without private module parts: ``torch.nn.functional.layer_norm``."""
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    return f"{module}.{qualname}" if module and module != "builtins" else qualname


# ----------------------------------------------------------------------------- time limit
class TimeLimitExceeded(BaseException):
    """Raised inside code that ran past its :func:`time_limit` (``args[0]``: the limit in seconds)."""


def can_interrupt() -> bool:
    """Whether :func:`time_limit` can interrupt here (POSIX signals, main thread); else it only measures."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block once it has run ``seconds`` of wall time.

    Uses ``SIGALRM``; an enclosing limit (another ``time_limit`` or the grader's cell limit) keeps
    its deadline: when it comes first, its own handler runs. Where signals cannot be used
    (:func:`can_interrupt` is false) the block runs unlimited; callers measure the time themselves.
    """
    if seconds is None or not can_interrupt():
        yield
        return
    start = time.monotonic()
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    state: dict[str, Any] = {"outer_fired": False, "stopper": None}
    caller = sys._getframe(1)

    def on_alarm(signum: int, frame: Any) -> None:
        if time.monotonic() - start >= seconds - 1e-3 or outer_left <= 0:
            signal.setitimer(signal.ITIMER_REAL, 0.25)  # again, should the code swallow it and go on
            if state["stopper"] is None and time.monotonic() - start >= seconds + 0.2:  # it was swallowed
                state["stopper"] = _Stopper(seconds, caller)
                state["stopper"].start(frame)
            raise TimeLimitExceeded(seconds)
        state["outer_fired"] = True  # the enclosing deadline came first: its handler decides
        signal.signal(signal.SIGALRM, outer_handler)
        if callable(outer_handler):
            outer_handler(signum, frame)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_left) if outer_left > 0 else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if state["stopper"] is not None:
            state["stopper"].stop()
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left > 0 and not state["outer_fired"]:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))


class _Stopper:
    """For code that swallowed a time-out: raise it again on every line run inside the limited block.

    A trace function (``sys.settrace``, and ``f_trace`` on the frames already running) raises
    :class:`TimeLimitExceeded` at each new line or call, so even ``except BaseException: pass`` in a
    loop cannot go on. The frames that called :func:`time_limit` (and this module's and contextlib's)
    are left alone, so the caller handles the exception normally; :meth:`stop` removes the tracing.
    """

    def __init__(self, seconds: float, caller: types.FrameType):
        self.seconds = seconds
        self.protected: set[int] = set()
        while caller is not None:
            self.protected.add(id(caller))
            caller = caller.f_back
        self.old_trace = sys.gettrace()
        self.frames: list[types.FrameType] = []

    def _spared(self, frame: types.FrameType) -> bool:
        return id(frame) in self.protected or frame.f_code.co_filename in (__file__, contextlib.__file__)

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        if self._spared(frame):
            return None
        if event in ("call", "line"):
            raise TimeLimitExceeded(self.seconds)
        return self

    def start(self, frame: types.FrameType | None) -> None:
        sys.settrace(self)
        while frame is not None:
            if not self._spared(frame):
                frame.f_trace, frame.f_trace_lines = self, True
                self.frames.append(frame)
            frame = frame.f_back

    def stop(self) -> None:
        sys.settrace(self.old_trace)
        for frame in self.frames:
            frame.f_trace = None
        self.frames.clear()
