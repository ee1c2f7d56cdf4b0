"""Metrics against scikit-learn (an independent implementation) and hand counts."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

from titn_edu import evaluate
from titn_edu.metrics import confusion_matrix, count_flops, precision_recall_f1, topk_accuracy


def labels_from_confusion(cm):
    """Label/prediction lists that produce the confusion matrix ``cm`` (rows true, columns predicted)."""
    y_true, y_pred = [], []
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            y_true += [i] * count
            y_pred += [j] * count
    return torch.tensor(y_true), torch.tensor(y_pred)


# Class 3 is never predicted, class 4 never occurs: both zero-division cases of macro averaging.
KNOWN_CM = [
    [5, 1, 0, 0, 2],
    [2, 7, 1, 0, 0],
    [0, 3, 4, 0, 1],
    [1, 0, 2, 0, 0],
    [0, 0, 0, 0, 0],
]


def test_confusion_matrix_and_macro_scores_match_sklearn():
    y_true, y_pred = labels_from_confusion(KNOWN_CM)
    cm = confusion_matrix(y_pred, y_true, 5)
    assert cm.tolist() == KNOWN_CM
    assert cm.tolist() == skm.confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    p, r, f = precision_recall_f1(cm)
    sp, sr, sf, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(5), average="macro", zero_division=0)
    assert (p, r, f) == pytest.approx((sp, sr, sf), abs=1e-12)


def test_random_predictions_match_sklearn():
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 7, (500,), generator=g)
    y_pred = torch.where(torch.rand(500, generator=g) < 0.6, y_true, torch.randint(0, 7, (500,), generator=g))
    p, r, f = precision_recall_f1(confusion_matrix(y_pred, y_true, 7))
    assert p == pytest.approx(skm.precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert r == pytest.approx(skm.recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert f == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_topk_accuracy_matches_sklearn_and_hand_count():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 10, generator=g)
    labels = torch.randint(0, 10, (200,), generator=g)
    top1, top5 = topk_accuracy(logits, labels, (1, 5))
    assert top1 == pytest.approx(100 * skm.accuracy_score(labels, logits.argmax(1)))
    assert top5 == pytest.approx(100 * skm.top_k_accuracy_score(labels, logits.numpy(), k=5, labels=range(10)))
    # Hand-made: label ranks 1st, 2nd, 6th.
    small = torch.tensor([[9.0, 8, 7, 6, 5, 4], [8.0, 9, 7, 6, 5, 4], [9.0, 8, 7, 6, 5, 4]])
    assert topk_accuracy(small, torch.tensor([0, 0, 5]), (1, 2, 5, 6)) == pytest.approx([100 / 3, 200 / 3, 200 / 3, 100.0])
    # k above the class count counts everything; soft targets use their dominant class.
    assert topk_accuracy(small[:, :3], torch.tensor([2, 2, 2]), (5,)) == [100.0]
    soft = torch.tensor([[0.7, 0.3, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0], [0, 0, 0, 0, 0.4, 0.6]])
    assert topk_accuracy(small, soft, (1,)) == pytest.approx([200 / 3])


def test_metric_input_errors():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="square"):
        precision_recall_f1(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        count_flops(torch.nn.Linear(2, 2), (2,))


def test_count_flops_linear_and_conv():
    # Linear 16 -> 8: 16*8 multiply-adds = 256 FLOPs per sample (FLOPs = 2 x MACs).
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))
    assert count_flops(model, (1, 4, 4)) == pytest.approx(256 / 1e9)
    assert count_flops(model, (5, 1, 4, 4)) == pytest.approx(256 / 1e9)  # per image
    # Conv 3 -> 4, 3x3, padding 1 on 8x8: 8*8 outputs * 4 channels * 3*3*3 MACs.
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert count_flops(conv, (3, 8, 8)) == pytest.approx(2 * 8 * 8 * 4 * 27 / 1e9)
    assert conv.training  # mode restored


class _Fixed(torch.nn.Module):
    """Returns preset logits so evaluate() sees a known confusion matrix."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.num_classes = logits.shape[1]

    def forward(self, x):
        idx = x[:, 0, 0, 0].long()
        return self.logits[idx] + 0 * self.weight.sum()


def test_evaluate_reports_table3_columns():
    y_true, y_pred = labels_from_confusion(KNOWN_CM)
    n = len(y_true)
    logits = torch.nn.functional.one_hot(y_pred, 5).float() * 5 + torch.linspace(0, 1, 5)  # 2nd best: class 4
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    result = evaluate(_Fixed(logits), (images, y_true), batch_size=7, device="cpu")
    sp, sr, sf, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(5), average="macro", zero_division=0)
    assert result["confusion_matrix"] == KNOWN_CM
    assert result["top1"] == pytest.approx(100 * skm.accuracy_score(y_true, y_pred))
    assert result["top5"] == pytest.approx(100.0)  # 5 classes
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((sp, sr, sf))
    assert result["params"] == 3 and result["num_samples"] == n and result["seconds"] >= 0
    assert {"loss", "gflops", "num_classes"} <= set(result)


def test_count_flops_counts_attention_products_and_restores_the_fast_path():
    """FlopCounterMode cannot see inside the fused attention kernel; count_flops counts eq. 1 written out."""
    from titn_edu import MultiHeadAttention, build_model
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("vit-tiny", num_classes=10, depth=1).eval()
    tokens, dim = model.num_tokens, model.config["outer_dim"]
    with torch.no_grad(), FlopCounterMode(display=False) as fused:
        model(torch.zeros(1, 3, 32, 32))
    attention_products = 2 * 2 * tokens * tokens * dim  # QK^T and weights x V, 2 FLOPs per multiply-add
    assert count_flops(model, (3, 32, 32)) * 1e9 == fused.get_total_flops() + attention_products
    assert all(m.fused for m in model.modules() if isinstance(m, MultiHeadAttention))
