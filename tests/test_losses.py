"""Eq. 9 (CutMix criterion) and eq. 10 (TITN distillation loss) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from titn_edu.losses import TITNLoss, cutmix_cross_entropy

# Three samples, four classes: small numbers one can check on paper.
LOGITS = [[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0], [-1.0, 2.0, 0.0, 1.0]]
DISTILL = [[0.0, 1.5, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 0.0]]
TEACHER = [[0.1, 3.0, 0.0, 0.2], [4.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 2.5]]  # argmax: 1, 0, 3
Y_A, Y_B = [0, 2, 1], [3, 2, 0]


def log_softmax(row, tau=1.0):
    z = [v / tau for v in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ce(row, label):
    return -log_softmax(row)[label]


def soft_ce(row, probs):
    return -sum(p * lp for p, lp in zip(probs, log_softmax(row)))


def kl(teacher_row, student_row, tau):
    lt, ls = log_softmax(teacher_row, tau), log_softmax(student_row, tau)
    return sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float64 if isinstance(x[0], list) else torch.long, **kw)


def mixed_targets(lam):
    rows = []
    for a, b in zip(Y_A, Y_B):
        row = [0.0] * 4
        row[a] += lam
        row[b] += 1 - lam
        rows.append(row)
    return rows


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_cutmix_cross_entropy_is_eq9(lam):
    expected = sum(lam * ce(r, a) + (1 - lam) * ce(r, b) for r, a, b in zip(LOGITS, Y_A, Y_B)) / 3
    got = cutmix_cross_entropy(t(LOGITS), t(Y_A), t(Y_B), lam)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_cutmix_cross_entropy_per_sample_lambda():
    lams = [0.2, 0.5, 0.9]
    expected = sum(l * ce(r, a) + (1 - l) * ce(r, b) for r, a, b, l in zip(LOGITS, Y_A, Y_B, lams)) / 3
    assert cutmix_cross_entropy(t(LOGITS), t(Y_A), t(Y_B), torch.tensor(lams)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("lam", [0.25, 0.7])
def test_eq9_equals_cross_entropy_with_soft_target(lam):
    loss = TITNLoss(alpha=1.0)
    soft = loss(t(LOGITS), None, t(mixed_targets(lam)), None)
    assert soft.item() == pytest.approx(cutmix_cross_entropy(t(LOGITS), t(Y_A), t(Y_B), lam).item(), rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_hard_distillation_is_eq10_with_index_targets(alpha):
    teacher_labels = [1, 0, 3]
    expected = sum(
        alpha * ce(c, y) + (1 - alpha) * ce(d, lt) for c, d, y, lt in zip(LOGITS, DISTILL, Y_A, teacher_labels)
    ) / 3
    got = TITNLoss(alpha=alpha, distillation="hard")(t(LOGITS), t(DISTILL), t(Y_A), t(TEACHER))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha,lam", [(0.5, 0.3), (0.8, 0.6)])
def test_hard_distillation_with_cutmix_targets(alpha, lam):
    teacher_labels = [1, 0, 3]
    expected = sum(
        alpha * (lam * ce(c, a) + (1 - lam) * ce(c, b)) + (1 - alpha) * ce(d, lt)
        for c, d, a, b, lt in zip(LOGITS, DISTILL, Y_A, Y_B, teacher_labels)
    ) / 3
    got = TITNLoss(alpha=alpha)(t(LOGITS), t(DISTILL), t(mixed_targets(lam)), t(TEACHER))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha,tau", [(0.5, 1.0), (0.3, 2.0), (0.9, 4.0)])
def test_soft_distillation(alpha, tau):
    lam = 0.4
    expected = sum(
        alpha * soft_ce(c, y) + (1 - alpha) * tau * tau * kl(tr, d, tau)
        for c, d, y, tr in zip(LOGITS, DISTILL, mixed_targets(lam), TEACHER)
    ) / 3
    got = TITNLoss(alpha=alpha, distillation="soft", tau=tau)(t(LOGITS), t(DISTILL), t(mixed_targets(lam)), t(TEACHER))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_terms_and_no_teacher_paths():
    loss = TITNLoss(alpha=0.3)
    terms = loss.terms(t(LOGITS), t(DISTILL), t(Y_A), None)  # no teacher: both heads learn the labels
    class_ce = sum(ce(c, y) for c, y in zip(LOGITS, Y_A)) / 3
    distill_ce = sum(ce(d, y) for d, y in zip(DISTILL, Y_A)) / 3
    assert terms.class_loss.item() == pytest.approx(class_ce, rel=1e-6)
    assert terms.distill_loss.item() == pytest.approx(distill_ce, rel=1e-6)
    assert terms.total.item() == pytest.approx(0.3 * class_ce + 0.7 * distill_ce, rel=1e-6)
    single = loss.terms(t(LOGITS), None, t(Y_A), None)  # single-head model: plain cross-entropy
    assert single.total.item() == pytest.approx(class_ce, rel=1e-6) and single.distill_loss is None


def test_no_gradient_reaches_teacher_and_both_heads_get_one():
    class_logits = t(LOGITS).requires_grad_()
    distill_logits = t(DISTILL).requires_grad_()
    teacher = t(TEACHER).requires_grad_()
    for kind in ("hard", "soft"):
        TITNLoss(distillation=kind)(class_logits, distill_logits, t(Y_A), teacher).backward()
        assert teacher.grad is None
        assert class_logits.grad.abs().sum() > 0 and distill_logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs", [dict(alpha=-0.1), dict(alpha=1.5), dict(tau=0.0), dict(tau=-1.0), dict(distillation="medium")]
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        TITNLoss(**kwargs)


def test_bad_shapes_and_labels():
    loss = TITNLoss()
    c, d, tl = t(LOGITS), t(DISTILL), t(TEACHER)
    with pytest.raises(ValueError, match="outside"):
        loss(c, d, torch.tensor([0, 4, 1]), tl)  # label 4 with 4 classes
    with pytest.raises(ValueError, match="outside"):
        loss(c, d, torch.tensor([0, -1, 1]), tl)
    with pytest.raises(ValueError, match="batch"):
        loss(c, d, t(Y_A), tl[:2])  # teacher saw another batch
    with pytest.raises(ValueError, match="classes"):
        loss(c, d, t(Y_A), torch.zeros(3, 5))  # teacher with 5 classes
    with pytest.raises(ValueError, match="shape"):
        loss(c, d[:, :3], t(Y_A), tl)
    with pytest.raises(ValueError):
        loss(c, d, torch.tensor([0, 1]), tl)  # two labels for three samples
    with pytest.raises(ValueError):
        loss(c, d, torch.zeros(3, 5), tl)  # soft targets over 5 classes
    with pytest.raises(ValueError):
        loss(c[0], d, t(Y_A), tl)  # 1-D logits
    with pytest.raises(ValueError, match="outside"):
        cutmix_cross_entropy(c, t(Y_A), torch.tensor([0, 9, 1]), 0.5)
    with pytest.raises(ValueError, match="lam"):
        cutmix_cross_entropy(c, t(Y_A), t(Y_B), 1.5)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_smooths_the_labels_never_the_teacher(eps):
    """ε/C goes into every label target; the distillation term against the teacher's argmax is unchanged."""
    c = len(LOGITS[0])

    def smoothed_ce(logits, y):
        return soft_ce(logits, [(1 - eps) * (k == y) + eps / c for k in range(c)])

    terms = TITNLoss(label_smoothing=eps).terms(t(LOGITS), t(DISTILL), t(Y_A), t(TEACHER))
    plain = TITNLoss().terms(t(LOGITS), t(DISTILL), t(Y_A), t(TEACHER))
    expected = sum(smoothed_ce(lg, y) for lg, y in zip(LOGITS, Y_A)) / 3
    assert terms.class_loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms.distill_loss.item() == pytest.approx(plain.distill_loss.item(), rel=1e-7)
    assert terms.class_loss.item() != pytest.approx(plain.class_loss.item(), rel=1e-3)
    no_teacher = TITNLoss(label_smoothing=eps).terms(t(LOGITS), t(DISTILL), t(Y_A), None)
    assert no_teacher.distill_loss.item() == pytest.approx(sum(smoothed_ce(d, y) for d, y in zip(DISTILL, Y_A)) / 3, rel=1e-6)
    assert "label_smoothing" in repr(TITNLoss(label_smoothing=eps)) and "label_smoothing" not in repr(TITNLoss())


@pytest.mark.parametrize("eps", [-0.1, 1.0, True, "0.1"])
def test_bad_label_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        TITNLoss(label_smoothing=eps)
