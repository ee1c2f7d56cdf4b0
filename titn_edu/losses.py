r"""The hybrid CutMix + distillation loss (paper §3.5, eq. 7–10, Algorithm 2).

* :func:`cutmix_cross_entropy` is eq. 9, the CutMix criterion: an image made of two images
  (fraction :math:`\lambda` from image *a*, :math:`1-\lambda` from image *b*) is scored against both
  labels, :math:`\mathcal{L}_{CM} = \lambda\,\mathcal{L}_{CE}(p, l_a) + (1-\lambda)\,\mathcal{L}_{CE}(p, l_b)`.
  Because cross-entropy is linear in its target, this equals cross-entropy against the *soft*
  target :math:`\lambda\,\mathrm{onehot}(a) + (1-\lambda)\,\mathrm{onehot}(b)` — exactly what
  ``torchvision.transforms.v2.CutMix`` / ``MixUp`` hand back as labels.
* :class:`TITNLoss` is eq. 10: the class token learns the (mixed) labels, the distillation token
  learns the teacher,

  .. math::
      \mathcal{L} = \alpha\,\mathcal{L}_{CM}(t_c, l) + (1-\alpha)\,\mathcal{L}_{CE}(t_d, l_t),
      \qquad l_t = \arg\max_c T(x)_c

  ("hard" distillation, the paper's). ``distillation="soft"`` replaces the second term by
  Hinton's :math:`\tau^2\,\mathrm{KL}(\mathrm{softmax}(T/\tau)\,\|\,\mathrm{softmax}(t_d/\tau))`.

All losses are batch means, computed in float32 (safe under bf16 autocast).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cutmix_cross_entropy", "soft_cross_entropy", "TITNLoss", "LossTerms", "DISTILLATION_KINDS"]

#: Values accepted by ``TITNLoss(distillation=...)``.
DISTILLATION_KINDS = ("hard", "soft")


# ----------------------------------------------------------------------------- checks
def _check_logits(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, classes); got {type(logits).__name__}.")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, classes); got {tuple(logits.shape)}.")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point (raw scores); got dtype {logits.dtype}.")


def _check_labels(name: str, labels: Tensor, batch: int, num_classes: int) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices; got {type(labels).__name__}.")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{name} must be class indices of shape ({batch},); got {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices; got dtype {labels.dtype}.")
    if labels.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} holds labels in [{low}, {high}], outside [0, {num_classes}): "
            f"the model has {num_classes} classes. Check the dataset's labels and the model's num_classes."
        )


def _check_targets(targets: Tensor, batch: int, num_classes: int) -> None:
    """Targets: class indices ``(B,)`` or probabilities ``(B, C)``."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor; got {type(targets).__name__}.")
    if targets.dim() == 2:
        if tuple(targets.shape) != (batch, num_classes):
            raise ValueError(
                f"soft targets must have shape (batch, classes) = ({batch}, {num_classes}); got "
                f"{tuple(targets.shape)}. (Build the batch mixer with num_classes={num_classes}.)"
            )
        if not targets.is_floating_point():
            raise ValueError(f"soft targets (B, C) must be floating-point probabilities; got dtype {targets.dtype}.")
        sums = targets.detach().sum(dim=-1)
        ok = ((sums - 1).abs() <= 1e-3).all() & (targets.detach() >= 0).all()  # NaN fails too; one sync
        if not bool(ok):
            raise ValueError(
                "soft targets (B, C) must be probabilities: finite, >= 0, each row summing to 1; got row sums "
                f"in [{sums.min().item():.4g}, {sums.max().item():.4g}]. Pass class indices (B,) or normalise "
                "the rows (e.g. targets / targets.sum(-1, keepdim=True))."
            )
        return
    _check_labels("targets", targets, batch, num_classes)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy (eq. 8), batch mean, against class indices ``(B,)`` or probabilities ``(B, C)``."""
    _check_logits("logits", logits)
    _check_targets(targets, logits.shape[0], logits.shape[1])
    return F.cross_entropy(logits.float(), targets.float() if targets.dim() == 2 else targets)


# ----------------------------------------------------------------------------- eq. 9
def cutmix_cross_entropy(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float | Tensor) -> Tensor:
    r"""Eq. 9: :math:`\lambda\,\mathrm{CE}(p, y_a) + (1-\lambda)\,\mathrm{CE}(p, y_b)`, batch mean.

    Args:
        logits: ``(B, C)`` raw scores ``p``.
        y_a, y_b: ``(B,)`` class indices of the two mixed images.
        lam: the share of image *a*, a number in [0, 1] or a tensor of shape ``()`` or ``(B,)``
            (one λ per sample).
    """
    _check_logits("logits", logits)
    batch, num_classes = logits.shape
    _check_labels("y_a", y_a, batch, num_classes)
    _check_labels("y_b", y_b, batch, num_classes)
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=logits.device)
    if lam_t.dim() > 1 or (lam_t.dim() == 1 and lam_t.shape[0] != batch):
        raise ValueError(f"lam must be a number or a tensor of shape () or ({batch},); got shape {tuple(lam_t.shape)}.")
    if not bool(((lam_t >= 0) & (lam_t <= 1)).all()):
        raise ValueError(f"lam must lie in [0, 1]; got {lam!r}.")
    ce_a = F.cross_entropy(logits.float(), y_a, reduction="none")
    ce_b = F.cross_entropy(logits.float(), y_b, reduction="none")
    return (lam_t * ce_a + (1 - lam_t) * ce_b).mean()


# ----------------------------------------------------------------------------- eq. 10
class LossTerms(NamedTuple):
    """The total loss and its two parts (both already unweighted batch means)."""

    total: Tensor
    class_loss: Tensor
    distill_loss: Tensor | None


class TITNLoss(nn.Module):
    r"""The TITN training loss, eq. 10 (hard) or its soft-label variant.

    Called as ``loss(class_logits, distill_logits, targets, teacher_logits)``:

    * ``class_logits``, ``distill_logits``: ``(B, C)`` outputs of the class and distillation heads.
    * ``targets``: class indices ``(B,)`` or mixed-label probabilities ``(B, C)`` (CutMix/MixUp); the
      class term is then eq. 9.
    * ``teacher_logits``: ``(B, C)`` scores of the frozen teacher on the *same* (mixed) images. They
      are detached: no gradient ever reaches the teacher.

    ``distillation="hard"`` (eq. 10):
    :math:`\alpha\,\mathrm{CE}(t_c, y) + (1-\alpha)\,\mathrm{CE}(t_d, \arg\max T)`.
    ``distillation="soft"``:
    :math:`\alpha\,\mathrm{CE}(t_c, y) + (1-\alpha)\,\tau^2\,\mathrm{KL}(\mathrm{softmax}(T/\tau)\,\|\,\mathrm{softmax}(t_d/\tau))`.

    Without a teacher (``teacher_logits=None``) the distillation head learns the labels too:
    :math:`\alpha\,\mathrm{CE}(t_c, y) + (1-\alpha)\,\mathrm{CE}(t_d, y)`; with a single-head model
    (``distill_logits=None``) the loss is plain (soft-target) cross-entropy.

    ``label_smoothing`` ε (default 0, the paper's loss) mixes ε/C into every label target, as
    ``F.cross_entropy(..., label_smoothing=ε)`` does; the teacher's labels are never smoothed.

    :meth:`terms` returns the total and both parts; ``forward`` returns the total.
    """

    def __init__(self, *, alpha: float = 0.5, distillation: str = "hard", tau: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1] (the weight of the label term, eq. 10); got {alpha!r}.")
        if not isinstance(distillation, str) or distillation.lower() not in DISTILLATION_KINDS:
            raise ValueError(f"unknown distillation kind {distillation!r}; choose one of {list(DISTILLATION_KINDS)}.")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not float(tau) > 0:
            raise ValueError(f"tau (the softmax temperature) must be a number > 0; got {tau!r}.")
        if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float))
                or not 0.0 <= float(label_smoothing) < 1.0):
            raise ValueError(f"label_smoothing must be a number in [0, 1); got {label_smoothing!r}.")
        self.alpha = float(alpha)
        self.distillation = distillation.lower()
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)

    def terms(
        self,
        class_logits: Tensor,
        distill_logits: Tensor | None,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
    ) -> LossTerms:
        """Like ``forward`` but returns ``LossTerms(total, class_loss, distill_loss)``."""
        _check_logits("class_logits", class_logits)
        batch, num_classes = class_logits.shape
        _check_targets(targets, batch, num_classes)
        smooth = self.label_smoothing
        targets = targets.float() if targets.dim() == 2 else targets
        class_loss = F.cross_entropy(class_logits.float(), targets, label_smoothing=smooth)
        if distill_logits is None:
            if teacher_logits is not None:
                raise ValueError(
                    "teacher_logits were given but distill_logits is None: pass the student's logits as "
                    "distill_logits too (classic distillation on one head), or drop the teacher."
                )
            return LossTerms(class_loss, class_loss, None)

        _check_logits("distill_logits", distill_logits)
        if distill_logits.shape != class_logits.shape:
            raise ValueError(
                f"distill_logits {tuple(distill_logits.shape)} and class_logits {tuple(class_logits.shape)} "
                f"must have the same shape (batch, classes)."
            )
        distill_logits = distill_logits.float()
        if teacher_logits is None:
            distill_loss = F.cross_entropy(distill_logits, targets, label_smoothing=smooth)
        else:
            _check_logits("teacher_logits", teacher_logits)
            if teacher_logits.shape[0] != batch:
                raise ValueError(
                    f"teacher_logits has batch size {teacher_logits.shape[0]} but the student's is {batch}: "
                    f"the teacher must see the same (mixed) batch."
                )
            if teacher_logits.shape[1] != num_classes:
                raise ValueError(
                    f"the teacher predicts {teacher_logits.shape[1]} classes but the student {num_classes}: "
                    f"build both for the same dataset (num_classes={num_classes})."
                )
            teacher_logits = teacher_logits.detach().float()
            if self.distillation == "hard":
                distill_loss = F.cross_entropy(distill_logits, teacher_logits.argmax(dim=-1))
            else:
                t = self.tau
                kl = F.kl_div(
                    F.log_softmax(distill_logits / t, dim=-1),
                    F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean",
                    log_target=True,
                )
                distill_loss = kl * t * t
        total = self.alpha * class_loss + (1 - self.alpha) * distill_loss
        return LossTerms(total, class_loss, distill_loss)

    def forward(
        self,
        class_logits: Tensor,
        distill_logits: Tensor | None,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
    ) -> Tensor:
        return self.terms(class_logits, distill_logits, targets, teacher_logits).total

    def extra_repr(self) -> str:
        tau = f", tau={self.tau}" if self.distillation == "soft" else ""
        smooth = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"alpha={self.alpha}, distillation={self.distillation!r}{tau}{smooth}"
