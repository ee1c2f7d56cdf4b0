r"""Part II, notebook 07 (the teacher): scores read off a confusion matrix, and top-k accuracy.

:func:`per_class_scores` checks precision and recall per class, from a confusion matrix with rows for
the true and columns for the predicted class, against the definitions of
:func:`titn_edu.metrics.precision_recall_f1` (0 where a denominator is 0). :func:`topk_accuracy`
checks top-k accuracy written without ``topk`` against :func:`titn_edu.metrics.topk_accuracy`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .. import metrics
from .guard import forbid
from .harness import (CHECKERS, Case, describe_shape, difference, first_hint, generator, keeps_global_rng,
                      number_result, passed, randint, require_callable)

__all__ = ["per_class_scores", "topk_accuracy"]

_NO_METRICS = CHECKERS | forbid((metrics, "titn_edu.metrics"))
_NO_TOPK = _NO_METRICS | forbid((torch.topk, "torch.topk"), (Tensor.topk, "Tensor.topk"),
                                (torch.sort, "torch.sort"), (Tensor.sort, "Tensor.sort"),
                                (torch.argsort, "torch.argsort"), (Tensor.argsort, "Tensor.argsort"))


def _scores(cm: Tensor, *, by: str = "columns") -> tuple[Tensor, Tensor]:
    """Per-class (precision, recall), each 0 where its denominator is 0; ``by="rows"`` swaps the two sums."""
    cm = cm.double()
    tp = cm.diagonal()
    predicted, actual = cm.sum(0), cm.sum(1)
    if by == "rows":
        predicted, actual = actual, predicted
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    return precision, recall


def _confusion(g: torch.Generator, classes: int, empty_column: bool) -> Tensor:
    """A (C, C) count matrix, mostly diagonal; with ``empty_column`` one class is never predicted."""
    cm = torch.randint(0, 6, (classes, classes), generator=g)
    cm += torch.diag(torch.randint(10, 40, (classes,), generator=g))
    if empty_column:
        cm[:, randint(g, 0, classes - 1)] = 0
    return cm


@keeps_global_rng
def per_class_scores(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check per-class precision and recall read off a confusion matrix.

    ``student_fn(cm)`` takes a ``(C, C)`` integer confusion matrix, ``cm[true, predicted]``, and returns
    ``(precision, recall)``, two ``(C,)`` tensors: for class ``c``, precision ``cm[c, c] / cm[:, c].sum()``
    and recall ``cm[c, c] / cm[c, :].sum()``, each 0 where its denominator is 0 (a class never predicted,
    or never present). It may not use :mod:`titn_edu.metrics`. ``seed``: other class counts (a hidden test).
    """
    require_callable("per_class_scores", student_fn, "a function cm -> (precision, recall)")
    check, reference = "per_class_scores", "the definitions of titn_edu.metrics.precision_recall_f1"
    configs = [(10, False), (3, False), (4, True)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 2, 12), False), (randint(g, 2, 12), True), (1, False)]
    total = len(configs)
    for i, (classes, empty) in enumerate(configs):
        what = f"a {classes}×{classes} matrix" + (" with a class that is never predicted" if empty else "")
        case = Case(check, i, total, what, _NO_METRICS)
        cm = _confusion(generator((700 if seed is None else seed) + i), classes, empty)
        original = cm.clone()
        got = case.call(student_fn, cm)
        case.unchanged({"cm": cm}, {"cm": original})
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            case.fail(f"expected a pair (precision, recall); got {describe_shape(got)}.")
        want = _scores(original)
        swapped = _scores(original, by="rows")
        for j, name in enumerate(("precision", "recall")):
            value = got[j].double() if isinstance(got[j], Tensor) else got[j]
            problem = difference(value, want[j], name, atol=1e-6)
            if problem:
                hint = first_hint(value, [(swapped[j], "precision divides by what was *predicted* as the class (a "
                                           "column sum of cm[true, predicted]), recall by what truly *is* the class "
                                           "(a row sum).")])
                if hint is None and isinstance(value, Tensor) and bool(torch.isnan(value).any()):
                    hint = "a class that is never predicted (an all-zero column) has precision 0, not NaN: guard the division."
                case.fail(problem, hint)
    passed(check, total, reference)


def _topk_reference(logits: Tensor, labels: Tensor, k: int) -> float:
    return metrics.topk_accuracy(logits, labels, (k,))[0]


@keeps_global_rng
def topk_accuracy(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check top-k accuracy, in percent, written without ``topk`` or sorting.

    ``student_fn(logits, labels, k)`` takes ``(B, C)`` scores, ``(B,)`` true classes and an ``int`` k and
    returns the percentage (0–100) of rows whose true class is among the k highest scores, as a number.
    It may not call ``topk``, ``sort``, ``argsort`` or :mod:`titn_edu.metrics`. Scores have no ties.
    ``seed``: other batch sizes, class counts and k, including k = C (a hidden test).
    """
    require_callable("topk_accuracy", student_fn, "a function (logits, labels, k) -> percent")
    check, reference = "topk_accuracy", "titn_edu.metrics.topk_accuracy"
    configs = [(64, 10, 1), (64, 10, 2), (64, 10, 5), (7, 3, 1)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 1, 50), c, randint(g, 1, c)) for c in (randint(g, 2, 20), randint(g, 2, 20))]
        configs.append((randint(g, 1, 20), 5, 5))
    total = len(configs)
    for i, (batch, classes, k) in enumerate(configs):
        case = Case(check, i, total, f"{batch} rows of {classes} classes, k = {k}", _NO_TOPK)
        g = generator((710 if seed is None else seed) + i)
        logits = torch.randn(batch, classes, generator=g)
        labels = torch.randint(0, classes, (batch,), generator=g)
        want = _topk_reference(logits, labels, k)
        got = number_result(case, case.call(student_fn, logits.clone(), labels.clone(), k), "the accuracy")
        if abs(got - want) > 1e-3:                      # one image is at least 1/50 of the batch: 2 %
            hint = None
            if abs(100 * got - want) < 1e-3:
                hint = "return a percentage (0–100), not a fraction."
            elif k < classes and abs(got - _topk_reference(logits, labels, k + 1)) < 1e-3:
                hint = "a rank of 0 means the best score: the label is in the top k when fewer than k scores are larger."
            case.fail(f"the accuracy is {got:.4f} %, expected {want:.4f} %.", hint)
    passed(check, total, reference)
