r"""Part II, notebook 08 (training): the loss without a teacher, and who copies the teacher's mistakes.

:func:`loss_without_teacher` checks eq. 10 with the teacher taken away (both heads learn the labels)
against ``titn_edu.losses.TITNLoss(alpha=alpha)(class_logits, distill_logits, targets, None)``.
:func:`copied_mistakes` checks the share of the teacher's mistakes a prediction repeats.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import losses
from .guard import forbid
from .harness import (CHECKERS, Case, first_hint, generator, keeps_global_rng, number_result, passed, randint,
                      require_callable, scalar_difference)

__all__ = ["loss_without_teacher", "copied_mistakes"]

_NO_LOSS = CHECKERS | forbid((losses, "titn_edu.losses"))


@keeps_global_rng
def loss_without_teacher(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check the training loss without a teacher: :math:`\alpha\,CE(t_c, y) + (1-\alpha)\,CE(t_d, y)`.

    ``student_fn(class_logits, distill_logits, targets, alpha)`` takes the two heads' ``(B, C)`` logits,
    ``targets`` as class indices ``(B,)`` or CutMix probabilities ``(B, C)``, and α, and returns the
    batch-mean loss: both heads learn the labels. It may not use :mod:`titn_edu.losses`. ``seed``: other
    sizes, α at the ends of [0, 1] and soft targets (a hidden test).
    """
    require_callable("loss_without_teacher", student_fn, "a function (class_logits, distill_logits, targets, alpha) -> loss")
    check, reference = "loss_without_teacher", "titn_edu.losses.TITNLoss(alpha=alpha)(..., teacher_logits=None)"
    configs = [(8, 10, 0.5, False), (5, 3, 0.2, False), (6, 10, 0.5, True)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 1, 16), randint(g, 2, 12), a, soft) for a, soft in ((0.0, False), (1.0, True), (0.7, True))]
    total = len(configs)
    for i, (batch, classes, alpha, soft) in enumerate(configs):
        what = f"batch {batch}, {classes} classes, alpha {alpha}, " + ("soft (CutMix) targets" if soft else "class indices")
        case = Case(check, i, total, what, _NO_LOSS)
        g = generator((800 if seed is None else seed) + i)
        c, d = 2 * torch.randn(2, batch, classes, generator=g)
        if soft:
            targets = torch.rand(batch, classes, generator=g).softmax(-1)
        else:
            targets = torch.randint(0, classes, (batch,), generator=g)
        want = losses.TITNLoss(alpha=alpha)(c, d, targets, None)
        got = case.call(student_fn, c.clone(), d.clone(), targets.clone(), alpha)
        problem = scalar_difference(got, want, "the loss")
        if problem:
            ce_c, ce_d = F.cross_entropy(c, targets), F.cross_entropy(d, targets)
            value = torch.tensor(float(got)) if isinstance(got, (int, float)) else got
            hint = first_hint(value.reshape(()) if isinstance(value, Tensor) and value.numel() == 1 else value, [
                ((1 - alpha) * ce_c + alpha * ce_d, "α weighs the class head: alpha · CE(class) + (1 − alpha) · CE(distillation)."),
                (ce_c, "without a teacher the distillation head still learns: it gets the labels as its target."),
                (ce_c + ce_d, "weigh the two terms with alpha and 1 − alpha."),
            ])
            case.fail(problem, hint)
    passed(check, total, reference)


def _copied(pred: Tensor, teacher_pred: Tensor, labels: Tensor) -> float:
    wrong = teacher_pred != labels
    return float(((pred == teacher_pred) & wrong).sum()) / max(int(wrong.sum()), 1)


@keeps_global_rng
def copied_mistakes(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check the share of the teacher's mistakes that a prediction repeats.

    ``student_fn(pred, teacher_pred, labels)`` takes three ``(N,)`` tensors of class indices and returns
    a number in [0, 1]: among the images the teacher gets wrong, the share on which ``pred`` gives the
    teacher's (wrong) class; 0 when the teacher makes no mistake. ``seed``: other sizes, and a teacher
    that is always right (a hidden test).
    """
    require_callable("copied_mistakes", student_fn, "a function (pred, teacher_pred, labels) -> share")
    check, reference = "copied_mistakes", "the definition"
    configs = [(40, 5, 0.5), (200, 10, 0.3), (10, 3, 0.0)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 5, 300), randint(g, 2, 12), 0.4), (randint(g, 1, 50), randint(g, 2, 12), 0.0), (1, 2, 1.0)]
    total = len(configs)
    for i, (n, classes, error) in enumerate(configs):
        what = f"{n} images, {classes} classes, the teacher wrong on about {100 * error:.0f} %"
        case = Case(check, i, total, what)
        g = generator((810 if seed is None else seed) + i)
        labels = torch.randint(0, classes, (n,), generator=g)
        flip = torch.rand(n, generator=g) < error
        teacher = torch.where(flip, (labels + torch.randint(1, classes, (n,), generator=g)) % classes, labels)
        copy = torch.rand(n, generator=g) < 0.5
        pred = torch.where(copy, teacher, torch.randint(0, classes, (n,), generator=g))
        want = _copied(pred, teacher, labels)
        got = number_result(case, case.call(student_fn, pred.clone(), teacher.clone(), labels.clone()), "the share")
        if abs(got - want) > 1e-6:
            wrong = int((teacher != labels).sum())
            hint = None
            if abs(got - float(((pred == teacher) & (teacher != labels)).sum()) / n) < 1e-6 and wrong:
                hint = "divide by the number of the teacher's mistakes, not by the number of images."
            elif abs(got - float((pred == teacher).float().mean())) < 1e-6:
                hint = "count only the images the teacher gets wrong: agreeing with a right teacher is no mistake."
            elif abs(got - 100 * want) < 1e-6:
                hint = "return a share between 0 and 1, not a percentage."
            case.fail(f"the share is {got:.4f}, expected {want:.4f} (the teacher is wrong on {wrong} of {n}).", hint)
    passed(check, total, reference)
