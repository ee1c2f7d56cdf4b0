r"""Part II, notebook 06 (the loss): CutMix (paper §3.5.2) and the hybrid loss, eq. 10.

* :func:`cutmix_box` checks a student's CutMix box and label weight against the rule of
  ``torchvision.transforms.v2.CutMix``;
* :func:`titn_loss` checks a student's eq. 10 with hard distillation,
  :math:`\alpha\,\mathrm{CE}(t_c, y) + (1-\alpha)\,\mathrm{CE}(t_d, \arg\max T)`, against
  :class:`titn_edu.losses.TITNLoss`.

Neither accepts the library's own code inside the student's: :mod:`titn_edu.losses` for the loss;
the library's and torchvision's CutMix (:mod:`titn_edu.data`, ``torchvision.transforms``) for the box.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision.transforms
from torch import Tensor

from .. import data, device_data, losses
from ..losses import TITNLoss
from .guard import forbid
from .harness import CHECKERS, Case, first_hint, generator, keeps_global_rng, passed, randint, require_callable, scalar_difference

__all__ = ["titn_loss", "cutmix_box"]

_NO_LOSSES = CHECKERS | forbid(losses)
_NO_CUTMIX = CHECKERS | forbid(data, device_data, torchvision.transforms)


# -------------------------------------------------------------------------------- eq. 10
@keeps_global_rng
def titn_loss(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check eq. 10 against :class:`titn_edu.losses.TITNLoss` (hard distillation).

    ``student_fn(class_logits, distill_logits, targets, teacher_logits, alpha)`` with logits ``(B, C)``,
    ``targets`` the CutMix soft labels ``(B, C)`` (rows sum to 1) and ``alpha`` a float returns the scalar
    :math:`\alpha\,\mathrm{CE}(t_c, y) + (1-\alpha)\,\mathrm{CE}(t_d, \arg\max T)` (batch means).
    ``seed``: other sizes, a batch of one, alpha = 1 (a hidden test).
    """
    require_callable("titn_loss", student_fn, "a function (class_logits, distill_logits, targets, teacher_logits, alpha) -> scalar")
    check, reference = "titn_loss", "titn_edu.losses.TITNLoss(alpha=alpha) (eq. 10, hard distillation)"
    configs = [(4, 10, 0.5), (8, 5, 0.3), (3, 100, 0.9), (6, 10, 0.0)]
    if seed is not None:
        g = generator(seed)
        configs = [(randint(g, 2, 16), randint(g, 2, 60), round(randint(g, 1, 9) / 10, 1)), (1, randint(g, 2, 20), 0.5),
                   (randint(g, 2, 16), randint(g, 2, 60), 1.0)]
    total = len(configs)
    for i, (batch, classes, alpha) in enumerate(configs):
        case = Case(check, i, total, f"batch {batch}, {classes} classes, alpha={alpha}", _NO_LOSSES)
        inputs = _loss_inputs(generator((200 if seed is None else seed) + i), batch, classes)
        cls, dist, targets, teacher = inputs.values()
        want = TITNLoss(alpha=alpha)(cls, dist, targets, teacher)
        copies = {name: t.clone() for name, t in inputs.items()}
        got = case.call(student_fn, *copies.values(), alpha)
        case.unchanged(copies, inputs)
        problem = scalar_difference(got, want, "the loss")
        if problem:
            case.fail(problem, _loss_hint(got, cls, dist, targets, teacher, alpha))
    passed(check, total, reference)


def _loss_inputs(g: torch.Generator, batch: int, classes: int) -> dict[str, Tensor]:
    """Random logits of both heads and of the teacher, and CutMix soft targets mixing two labels per row."""
    cls, dist = 2 * torch.randn(batch, classes, generator=g), 2 * torch.randn(batch, classes, generator=g)
    teacher = 3 * torch.randn(batch, classes, generator=g)
    y_a, y_b = torch.randint(classes, (batch,), generator=g), torch.randint(classes, (batch,), generator=g)
    lam = torch.rand(batch, 1, generator=g)
    targets = lam * F.one_hot(y_a, classes) + (1 - lam) * F.one_hot(y_b, classes)
    return dict(class_logits=cls, distill_logits=dist, targets=targets, teacher_logits=teacher)


def _loss_hint(got: Any, cls: Tensor, dist: Tensor, targets: Tensor, teacher: Tensor, alpha: float) -> str | None:
    """Which known mistake (alpha swapped, soft distillation, heads swapped, sums …) produced ``got``."""
    if not isinstance(got, (Tensor, int, float)):
        return None
    batch = cls.shape[0]
    ce_cls = F.cross_entropy(cls, targets)
    hard_t = teacher.argmax(-1)
    mistakes = [
        ((1 - alpha) * ce_cls + alpha * F.cross_entropy(dist, hard_t),
         "alpha weights the label (class-head) term, 1 - alpha the teacher term."),
        (alpha * ce_cls + (1 - alpha) * F.cross_entropy(dist, teacher.softmax(-1)),
         "hard distillation uses the teacher's predicted class, argmax of its logits, not its probabilities."),
        (alpha * ce_cls + (1 - alpha) * F.kl_div(dist.log_softmax(-1), teacher.log_softmax(-1),
                                                 reduction="batchmean", log_target=True),
         "that is soft distillation (KL); eq. 10 uses cross-entropy with the teacher's hard label."),
        (alpha * F.cross_entropy(cls, targets.argmax(-1)) + (1 - alpha) * F.cross_entropy(dist, hard_t),
         "score the class head against the whole mixed target (eq. 9), not only its dominant class."),
        (alpha * F.cross_entropy(dist, targets) + (1 - alpha) * F.cross_entropy(cls, hard_t),
         "the class head learns the labels, the distillation head the teacher: the heads are swapped."),
        (alpha * ce_cls * batch + (1 - alpha) * F.cross_entropy(dist, hard_t) * batch,
         "take batch means, not sums."),
    ]
    return first_hint(got if isinstance(got, Tensor) else torch.tensor(float(got)), mistakes)


# -------------------------------------------------------------------------------- CutMix
def cutmix_box(student_fn: Callable, *, seed: int | None = None) -> None:
    r"""Check a CutMix box against ``torchvision.transforms.v2.CutMix``'s rule (paper §3.5.2).

    ``student_fn(lam, height, width, cx, cy)`` returns ``((x1, y1, x2, y2), lam_adjusted)``: a box of
    half-sides ``int(½·√(1-λ)·W)`` and ``int(½·√(1-λ)·H)`` around the centre ``(cx, cy)``, clipped to the
    image (``x2``, ``y2`` exclusive), and the fraction of the image *not* covered by it,
    :math:`1 - \frac{(x_2-x_1)(y_2-y_1)}{HW}`, which is the label weight of the first image.
    ``seed``: other λ, image sizes and centres, corners included (a hidden test).
    """
    require_callable("cutmix_box", student_fn, "a function (lam, height, width, cx, cy) -> ((x1, y1, x2, y2), lam)")
    check, reference = "cutmix_box", "torchvision.transforms.v2.CutMix's box rule"
    cases = [(0.5, 32, 32, 16, 16), (0.9, 32, 32, 10, 20), (0.2, 32, 32, 2, 30), (0.0, 28, 28, 14, 14),
             (1.0, 32, 32, 5, 5), (0.7, 24, 40, 39, 0)]
    if seed is not None:
        g = generator(seed)
        sizes = [(randint(g, 8, 64), randint(g, 8, 64)) for _ in range(4)]
        cases = [(randint(g, 0, 100) / 100, h, w, randint(g, 0, w - 1), randint(g, 0, h - 1)) for h, w in sizes[:3]]
        h, w = sizes[3]
        cases.append((randint(g, 0, 30) / 100, h, w, w - 1, h - 1))   # a large box at the far corner
    total = len(cases)
    for i, (lam, h, w, cx, cy) in enumerate(cases):
        case = Case(check, i, total, f"lam={lam}, image {h}×{w}, centre ({cx}, {cy})", _NO_CUTMIX)
        (want_box, want_lam) = _reference_cutmix_box(lam, h, w, cx, cy)
        got = case.call(student_fn, lam, h, w, cx, cy)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[0], (tuple, list)) or len(got[0]) != 4:
            case.fail(f"expected ((x1, y1, x2, y2), lam); got {got!r}.")
        box = tuple(int(v) for v in got[0])
        if box != want_box:
            case.fail(f"your box is {box}; expected {want_box} (x1, y1, x2, y2).", _box_hint(box, lam, h, w, cx, cy))
        try:
            got_lam = float(got[1])
        except (TypeError, ValueError):
            case.fail(f"lam must be a number; got {type(got[1]).__name__}.")
        if abs(got_lam - want_lam) > 1e-6:
            case.fail(f"your lam is {got_lam:.6f}; expected {want_lam:.6f}.", _lam_hint(got_lam, lam, want_lam))
    passed(check, total, reference)


def _reference_cutmix_box(lam: float, height: int, width: int, cx: int, cy: int) -> tuple[tuple[int, int, int, int], float]:
    """The box ``torchvision.transforms.v2.CutMix`` pastes, and the λ it reports (area not pasted)."""
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x1, y1 = max(cx - half_w, 0), max(cy - half_h, 0)
    x2, y2 = min(cx + half_w, width), min(cy + half_h, height)
    return (x1, y1, x2, y2), 1.0 - (x2 - x1) * (y2 - y1) / (width * height)


def _box_hint(box: tuple[int, ...], lam: float, h: int, w: int, cx: int, cy: int) -> str | None:
    """Which known mistake (full side as half-side, no clipping, λ for 1-λ, x and y swapped) gives ``box``."""
    r = math.sqrt(1.0 - lam)
    if box == (max(cx - int(r * w), 0), max(cy - int(r * h), 0), min(cx + int(r * w), w), min(cy + int(r * h), h)):
        return "the box's side is √(1-λ)·W, so its half-side is ½·√(1-λ)·W."
    if box == (cx - int(0.5 * r * w), cy - int(0.5 * r * h), cx + int(0.5 * r * w), cy + int(0.5 * r * h)):
        return "clip the box to the image: x1 = max(cx - half, 0), x2 = min(cx + half, W)."
    if box == (max(cx - int(0.5 * lam ** 0.5 * w), 0), max(cy - int(0.5 * lam ** 0.5 * h), 0),
               min(cx + int(0.5 * lam ** 0.5 * w), w), min(cy + int(0.5 * lam ** 0.5 * h), h)):
        return "λ is the share of the *first* image: the pasted box covers 1 - λ, so its side is √(1-λ)·W."
    if box == (max(cy - int(0.5 * r * h), 0), max(cx - int(0.5 * r * w), 0),
               min(cy + int(0.5 * r * h), h), min(cx + int(0.5 * r * w), w)):
        return "x runs along the width (columns), y along the height (rows)."
    return None


def _lam_hint(got_lam: float, lam: float, want_lam: float) -> str | None:
    """Which known mistake (λ not recomputed after clipping, or the pasted share) gives ``got_lam``."""
    if abs(got_lam - lam) < 1e-9:
        return "after clipping the box, recompute λ from its real area: 1 - (x2-x1)(y2-y1)/(H·W)."
    if abs(got_lam - (1 - want_lam)) < 1e-6:
        return "λ is the share of the image *outside* the box: 1 - area/(H·W)."
    return None
