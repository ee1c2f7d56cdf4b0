r"""Part II, notebook 10 (ablations): the standard error of a difference of two means.

:func:`unpaired_se` checks :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}` (``s²`` the sample variance, divided by
``n − 1``), the standard error of the difference of the means of two independent samples.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .harness import Case, generator, keeps_global_rng, number_result, passed, randint, require_callable

__all__ = ["unpaired_se"]


def _se(a: list[float], b: list[float], ddof: int = 1, root: bool = True) -> float:
    va = torch.tensor(a, dtype=torch.float64).var(correction=ddof).item()
    vb = torch.tensor(b, dtype=torch.float64).var(correction=ddof).item()
    v = va / len(a) + vb / len(b)
    return math.sqrt(v) if root else v


@keeps_global_rng
def unpaired_se(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check the standard error of the difference of two means from independent samples.

    ``student_fn(a, b)`` takes two lists of numbers (at least two each; their lengths may differ) and
    returns :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}` with the sample variances (divided by ``n − 1``), as a
    number. ``seed``: other sizes and spreads (a hidden test).
    """
    require_callable("unpaired_se", student_fn, "a function (a, b) -> standard error")
    check, reference = "unpaired_se", "sqrt(var(a)/n_a + var(b)/n_b)"
    configs = [([1.0, 3.0], [2.0, 2.0]), 3, 5]
    if seed is not None:
        g = generator(seed)
        configs = [randint(g, 2, 10), randint(g, 2, 10), 2]
    total = len(configs)
    for i, config in enumerate(configs):
        if isinstance(config, tuple):
            a, b = config
        else:
            g = generator((1000 if seed is None else seed) + i)
            a = (30 + 2 * torch.randn(config, generator=g, dtype=torch.float64)).tolist()
            b = (32 + 5 * torch.randn(config + i % 2, generator=g, dtype=torch.float64)).tolist()
        case = Case(check, i, total, f"{len(a)} and {len(b)} runs")
        want = _se(a, b)
        got = number_result(case, case.call(student_fn, list(a), list(b)), "the standard error")
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            hint = None
            if math.isclose(got, _se(a, b, ddof=0), rel_tol=1e-6):
                hint = "use the sample variance, divided by n − 1 (torch's default), not by n."
            elif math.isclose(got, _se(a, b, root=False), rel_tol=1e-6):
                hint = "a standard error is the square root of the variance of the difference."
            case.fail(f"the standard error is {got:.6f}, expected {want:.6f}.", hint)
    passed(check, total, reference)
