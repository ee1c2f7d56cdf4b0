"""The paper's evaluation columns (Tables 2–5): top-1/top-5 accuracy, macro precision/recall/F1,
parameters and GFLOPs.

Conventions:

* accuracies are **percentages**; precision, recall and F1 are fractions in [0, 1], as in Table 3;
* the confusion matrix has the true class on the rows and the predicted class on the columns
  (scikit-learn's convention): ``cm[i, j]`` counts images of class ``i`` predicted as ``j``;
* precision, recall and F1 are **macro** averages: computed per class, then averaged with equal
  weight; a class that is never predicted (or never present) counts 0 for that score, as
  ``sklearn.metrics.precision_recall_fscore_support(..., average="macro", zero_division=0)``;
* FLOPs follow :class:`torch.utils.flop_counter.FlopCounterMode`: one multiply-add is **2 FLOPs**
  (FLOPs = 2 × MACs), and only matrix products, convolutions and attention are counted
  (element-wise work such as activations, norms and softmax is not).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .attention import MultiHeadAttention

__all__ = ["topk_accuracy", "topk_correct", "confusion_matrix", "precision_recall_f1", "count_flops",
           "written_out_attention"]


def _as_labels(targets: Tensor) -> Tensor:
    """Class indices ``(B,)`` as they are, or the dominant class of probabilities ``(B, C)``."""
    return targets.argmax(dim=-1) if targets.dim() == 2 else targets


def _topk_hits(logits: Tensor, labels: Tensor, topk: Sequence[int]) -> Tensor:
    """``(len(topk),)`` int64 tensor on the logits' device: samples whose label is in the top ``k``."""
    kmax = min(max(topk), logits.shape[1])
    top = logits.topk(kmax, dim=-1).indices  # (B, kmax), best first
    hits = (top == labels[:, None]).long().cumsum(dim=-1)  # hits[:, k-1] = 1 iff label in top-k
    return hits[:, [min(k, kmax) - 1 for k in topk]].sum(dim=0)


def topk_correct(logits: Tensor, targets: Tensor, topk: Sequence[int] = (1, 5)) -> list[int]:
    """How many samples have their label among the ``k`` highest scores, for each ``k``.

    ``k`` larger than the number of classes counts every sample (as top-5 on a 3-class problem).
    Soft targets ``(B, C)`` are scored against their dominant class.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, classes); got {tuple(logits.shape)}.")
    labels = _as_labels(targets)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}.")
    topk = tuple(topk)
    if not topk or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in topk):
        raise ValueError(f"topk must be a non-empty sequence of positive integers; got {topk}.")
    return [int(c) for c in _topk_hits(logits, labels, topk).tolist()]


def topk_accuracy(logits: Tensor, targets: Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent for each ``k`` in ``topk`` (see :func:`topk_correct`)."""
    batch = logits.shape[0] if logits.dim() else 0
    if batch == 0:
        raise ValueError("topk_accuracy needs at least one sample.")
    return [100.0 * c / batch for c in topk_correct(logits, targets, topk)]


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` int64 counts; rows are true classes, columns predicted classes.

    ``preds`` are predicted class indices ``(N,)`` (or logits ``(N, C)``, argmax'ed); ``targets``
    are true class indices ``(N,)``.
    """
    if preds.dim() == 2:
        preds = preds.argmax(dim=-1)
    preds, targets = preds.reshape(-1).long(), targets.reshape(-1).long()
    if preds.shape != targets.shape:
        raise ValueError(f"preds ({preds.numel()}) and targets ({targets.numel()}) must have the same length.")
    if preds.numel():
        for name, t in (("preds", preds), ("targets", targets)):
            low, high = int(t.min()), int(t.max())
            if low < 0 or high >= num_classes:
                raise ValueError(f"{name} hold classes in [{low}, {high}], outside [0, {num_classes}).")
    flat = targets * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def precision_recall_f1(cm: Tensor | Iterable[Iterable[int]]) -> tuple[float, float, float]:
    """Macro precision, recall and F1 (fractions) from a confusion matrix (rows true, columns predicted).

    Per class ``c``: precision = TP / (TP + FP) = ``cm[c, c] / cm[:, c].sum()``,
    recall = TP / (TP + FN) = ``cm[c, c] / cm[c, :].sum()``, F1 = 2PR / (P + R); each is 0 where its
    denominator is 0. The three are then averaged over classes (macro F1 is the mean of the
    per-class F1, not the F1 of the mean precision and recall).
    """
    cm = torch.as_tensor(cm, dtype=torch.float64)
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"the confusion matrix must be square (C, C); got {tuple(cm.shape)}.")
    tp = cm.diagonal()
    predicted, actual = cm.sum(dim=0), cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """GFLOPs of one forward pass per image (FLOPs = 2 × multiply-adds; see the module docstring).

    ``input_shape`` is one image ``(C, H, W)`` or a batch ``(B, C, H, W)`` (divided by ``B``). The
    model is run once in ``eval()`` mode on zeros, with attention written out as eq. 1
    (:class:`FlopCounterMode` does not see inside PyTorch's fused CPU attention kernel); its
    training mode and attention paths are restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W) with positive sizes; got {tuple(input_shape)}.")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with written_out_attention(model), FlopCounterMode(display=False) as counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / shape[0] / 1e9


@contextmanager
def written_out_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every :class:`~titn_edu.MultiHeadAttention` of ``model`` computes eq. 1 written out.

    For counting FLOPs: the same function, but as matrix products that :class:`FlopCounterMode`
    sees. Each layer's ``fused`` setting is restored on exit.
    """
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    saved = [m.fused for m in layers]
    for m in layers:
        m.fused = False
    try:
        yield model
    finally:
        for m, fused in zip(layers, saved):
            m.fused = fused
