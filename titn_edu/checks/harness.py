"""What every checker shares: run the student's code beside the reference, compare, report.

A checker (one per exercise, in the ``nb*`` modules of this package) goes through its cases, and for
each one uses the pieces below in this order:

1. **inputs**: seeded, from a private generator (:func:`generator`); the whole check runs with the
   global random state saved and restored (:func:`keeps_global_rng`), so calling a checker does not
   change what the rest of a notebook computes;
2. **the call**: :meth:`Case.call` runs the student's code under two guards (:mod:`.guard`): a time
   limit (``TIME_LIMIT_S``) and a watch for the library's own implementation of the exercise (the
   case's ``forbidden``, see :func:`.guard.forbid`); it turns an exception, a time-out or a call into
   the library into a failed case with a message saying which. :meth:`Case.unchanged` makes sure the
   code left its inputs alone. Class checkers first build both modules with the same weights
   (:func:`paired_modules`; a class that subclasses the library's fails before it is built);
3. **the comparison**: :func:`difference` says in one sentence how an output differs from the
   reference (type, shape, dtype, NaN, or the largest error and where), with the float32
   tolerances ``ATOL`` and ``RTOL``; :func:`first_hint` looks a wrong output up among the outputs
   of known mistakes;
4. **the verdict**: :func:`passed` prints one line; :meth:`Case.fail` raises ``AssertionError``
   naming the case, the problem and, when the mistake is a known one, a hint.

Reference modules and students' modules both run on the library's reference path
(:func:`titn_edu.set_fast_path` off): a check never builds or times a fast kernel.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NoReturn

import torch
from torch import Tensor, nn

from ..model import set_fast_path
from .guard import NOTHING, Forbidden, TimeLimitExceeded, time_limit

__all__ = [
    "ATOL",
    "RTOL",
    "Case",
    "passed",
    "difference",
    "scalar_difference",
    "close",
    "first_hint",
    "describe_shape",
    "require_callable",
    "require_class",
    "paired_modules",
    "keeps_global_rng",
    "generator",
    "randint",
    "TIME_LIMIT_S",
    "CHECKERS",
    "within_budget",
]

ATOL, RTOL = 1e-5, 1e-4  # float32 agreement expected from a correct implementation
#: Wall-clock seconds one call into a student's code may take before its case fails (the cases are small:
#: a correct implementation needs milliseconds).
TIME_LIMIT_S = 30.0
#: The checkers' own reference code (this package): forbidden to every submission.
CHECKERS = Forbidden(folders={os.path.dirname(os.path.abspath(__file__)) + os.sep: "titn_edu.checks"})


# ------------------------------------------------------------------------ one case, the verdict
@dataclass(frozen=True)
class Case:
    """One case of a check, as its messages name it: ``"<check> check failed on case 2 of 4 (<desc>)"``.

    ``forbidden``: the library's own implementation of the exercise (:func:`.guard.forbid`), which the
    student's code may not run; ``seconds``: the time limit of one call (default ``TIME_LIMIT_S``).
    """

    check: str
    index: int  # from 0; messages count from 1
    total: int
    desc: str
    forbidden: Forbidden = NOTHING
    seconds: float | None = None  # the time limit of one call; None: TIME_LIMIT_S

    def fail(self, message: str, hint: str | None = None) -> NoReturn:
        """Raise the ``AssertionError`` a student sees: case, problem, and a hint when there is one."""
        text = f"{self.check} check failed on case {self.index + 1} of {self.total} ({self.desc}): {message}"
        if hint:
            text += f"\nHint: {hint}"
        raise AssertionError(text)

    def call(self, fn: Callable, *args, hint: str | None = None, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` under the guards; what went wrong in the student's code fails this case.

        In this order: a call into the library's own implementation, a time-out
        (``TIME_LIMIT_S``), an exception raised by the student's code (``hint`` is added to its message).
        """
        error: BaseException | None = None
        limit = TIME_LIMIT_S if self.seconds is None else self.seconds
        start = time.monotonic()
        with self.forbidden.watching() as seen:
            try:
                with time_limit(limit):
                    result = fn(*args, **kwargs)
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # noqa: BLE001  (the student's code: anything it raises fails the case)
                error, result = err, None
        if seen:
            more = f" (and {len(seen) - 1} more function(s) of it)" if len(seen) > 1 else ""
            self.fail(f"your implementation runs {seen[0]}{more}: the library's own version of what this exercise "
                      "asks you to write.", "write it yourself; the check recognises the library's code however it is "
                      "reached (called directly, under another name, wrapped, or inherited by subclassing).")
        if isinstance(error, TimeLimitExceeded) or time.monotonic() - start > limit:
            self.fail(f"your implementation did not finish within {limit:g} s, its time limit.",
                      "look for a loop that never ends, or a Python loop over every element of a tensor.")
        if error is not None:
            self.fail(f"your implementation raised {type(error).__name__}: {error}", hint)
        return result

    def unchanged(self, inputs: dict[str, Tensor], originals: dict[str, Tensor]) -> None:
        """Fail when the student's code changed one of ``inputs`` (compared with ``originals``) in place."""
        for name, t in inputs.items():
            if not torch.equal(t, originals[name]):
                self.fail(f"your implementation changed its input `{name}` in place.",
                          "use out-of-place operations (x - mean, not x.sub_(mean)).")


def passed(check: str, total: int, reference: str) -> None:
    """The one line a student sees when every case agrees."""
    print(f"✓ {check} passed: {total}/{total} cases match {reference}.")


# --------------------------------------------------------------------------------- comparison
def describe_shape(t: Any) -> str:
    """``"(2, 5, 8)"`` for a tensor, the type's name for anything else."""
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def difference(got: Any, want: Tensor, name: str, *, atol: float = ATOL, rtol: float = RTOL) -> str | None:
    """``None`` when ``got`` matches ``want``, else a sentence saying how it differs."""
    if not isinstance(got, Tensor):
        return f"{name} should be a torch.Tensor of shape {tuple(want.shape)}; got {type(got).__name__}."
    if tuple(got.shape) != tuple(want.shape):
        return f"{name} has shape {tuple(got.shape)}; expected {tuple(want.shape)}."
    if not got.is_floating_point():
        return f"{name} has dtype {got.dtype}; expected a floating-point tensor like {want.dtype}."
    got64, want64 = got.detach().double(), want.detach().double()
    if not torch.isfinite(got64).all():
        return f"{name} contains NaN or infinite values."
    err = (got64 - want64).abs()
    if bool((err <= atol + rtol * want64.abs()).all()):
        return None
    index = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return (
        f"the values of {name} differ from the reference: max abs error {err.max().item():.2g} at index {index} "
        f"(yours {got64[index].item():.4g}, expected {want64[index].item():.4g})."
    )


def scalar_difference(got: Any, want: Tensor, name: str) -> str | None:
    """:func:`difference` for a batch mean: a one-element tensor or a Python number."""
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got))
    if not isinstance(got, Tensor) or got.numel() != 1:
        return f"{name} should be a scalar tensor (a batch mean); got {describe_shape(got)}."
    return difference(got.reshape(()), want.reshape(()), name)


def close(a: Any, b: Tensor, atol: float = 1e-4) -> bool:
    """Whether ``a`` is a tensor close to ``b``: looser than :func:`difference`, for spotting a known mistake."""
    return isinstance(a, Tensor) and a.shape == b.shape and bool(torch.allclose(a.detach().double(), b.double(), atol=atol, rtol=1e-3))


def first_hint(got: Any, mistakes: Iterable[tuple[Tensor | None, str]], atol: float = 1e-4) -> str | None:
    """The hint of the first known mistake whose output ``got`` matches (``None`` outputs are skipped)."""
    return next((hint for output, hint in mistakes if output is not None and close(got, output, atol)), None)


# ------------------------------------------------------------------------ what a student passes
def require_callable(check: str, obj: Any, what: str) -> None:
    """A ``TypeError`` (a usage error, not a failed check) when a function checker gets no function."""
    if not callable(obj):
        raise TypeError(f"checks.{check} expects {what}; got {type(obj).__name__}.")


def require_class(check: str, obj: Any, reference: str) -> None:
    """A ``TypeError`` when a class checker gets something other than an ``nn.Module`` subclass."""
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise TypeError(
            f"checks.{check} expects your class (a torch.nn.Module subclass, not an instance) with the same "
            f"constructor as {reference}; got {obj!r}."
        )


# ------------------------------------------------------------------- class checkers: two modules
def paired_modules(case: Case, student_class: type, reference_module: nn.Module, reference: str,
                   args: tuple, kwargs: dict, gen: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """``(reference, student)``: the library's module with seeded weights and the student's holding a copy.

    ``reference_module`` is the library's module built with ``args``/``kwargs``; the student's class is
    built with the same arguments (under the case's guards), must have the same parameter names and
    shapes, and gets the reference weights with ``load_state_dict(strict=True)``. Both are in
    ``eval()`` mode, on the reference path. A class derived from one of the case's forbidden classes
    fails before it is built.
    """
    inherited = case.forbidden.subclassed_by(student_class)
    if inherited:
        case.fail(f"your class is or derives from {inherited}, the library's own version of what this exercise "
                  "asks you to write.", "derive from torch.nn.Module and write the computation yourself.")
    ref = _randomise(set_fast_path(reference_module, False), gen)
    student = _build(case, student_class, reference, args, kwargs)
    _copy_weights(case.check, student, ref, reference)
    set_fast_path(student, False)  # library modules inside the student's class: reference path too
    return ref, student


def _randomise(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Seeded weights everywhere, incl. LayerNorm scales and biases (so forgetting one shows)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return module.eval()


def _build(case: Case, cls: type, reference: str, args: tuple, kwargs: dict) -> nn.Module:
    """``cls(*args, **kwargs)`` under the case's guards; a constructor that fails or returns no module fails."""
    call = f"{cls.__name__}(" + ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]) + ")"
    module = case.call(cls, *args, **kwargs, hint=f"the check could not build your class as {call}: its constructor "
                                                  f"must accept the same arguments as {reference}.")
    if not isinstance(module, nn.Module):
        case.fail(f"{call} did not return a torch.nn.Module.")
    return module


def _copy_weights(check: str, student: nn.Module, ref: nn.Module, reference: str) -> None:
    """Load the reference state_dict into the student's module; explain any name/shape mismatch."""
    mine, theirs = student.state_dict(), ref.state_dict()
    missing = [k for k in theirs if k not in mine]
    unexpected = [k for k in mine if k not in theirs]
    wrong = [f"{k} {tuple(mine[k].shape)} (expected {tuple(theirs[k].shape)})"
             for k in theirs if k in mine and mine[k].shape != theirs[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected))
        if wrong:
            parts.append("wrong shape: " + "; ".join(wrong))
        expected = ", ".join(f"{k} {tuple(v.shape)}" for k, v in theirs.items())
        raise AssertionError(
            f"{check} check: your module's parameters must have the same names and shapes as {reference}'s, so "
            f"that the reference weights can be copied into it. " + "; ".join(parts) + f".\nExpected: {expected}."
        )
    student.load_state_dict(theirs, strict=True)
    student.eval()


# ------------------------------------------------------------------------------- randomness
def keeps_global_rng(checker: Callable) -> Callable:
    """Run a checker with the global CPU random state saved and restored (building modules draws from it)."""

    @functools.wraps(checker)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return checker(*args, **kwargs)

    return wrapper


def generator(seed: int) -> torch.Generator:
    """A private CPU generator: a case's inputs and weights depend on its seed only."""
    return torch.Generator().manual_seed(seed)


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer drawn from ``low`` to ``high`` (both included) with ``g``: the sizes of a hidden test's cases."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


# ------------------------------------------------------------- a question graded on an outcome
def within_budget(fn: Callable, *args: Any, seconds: float, what: str = "training",
                  forbidden: Forbidden = NOTHING, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds it took)``, for a question graded on a measured outcome.

    For instance a hidden test that runs the student's training function on a CPU budget and then
    measures the accuracy of what it returns. Running past ``seconds`` (wall clock), raising, or
    running ``forbidden`` code fails with an ``AssertionError`` that says which (named ``what``).
    """
    case = Case(what, 0, 1, f"a budget of {seconds:g} s", forbidden, seconds)
    start = time.monotonic()
    result = case.call(fn, *args, **kwargs)
    return result, time.monotonic() - start
