"""Part II checkers accept correct implementations and name the subtle mistakes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from titn_edu import checks, viz
from titn_edu.losses import TITNLoss

from test_checks import fails, unguarded  # noqa: E402  (shared helpers: expect an AssertionError; lift the guard)


# ------------------------------------------------------------------------ titn_loss
def loss_ok(cls, dist, targets, teacher, alpha):
    ce_cls = -(targets * cls.log_softmax(-1)).sum(-1).mean()
    ce_dist = F.cross_entropy(dist, teacher.argmax(-1))
    return alpha * ce_cls + (1 - alpha) * ce_dist


def test_titn_loss_accepts_correct(capsys):
    checks.titn_loss(loss_ok)
    with unguarded():
        checks.titn_loss(lambda c, d, y, t, a: TITNLoss(alpha=a)(c, d, y, t))
    assert capsys.readouterr().out.count("✓ titn_loss passed: 4/4") == 2


@pytest.mark.parametrize("wrong, needle", [
    (lambda c, d, y, t, a: (1 - a) * F.cross_entropy(c, y) + a * F.cross_entropy(d, t.argmax(-1)), "alpha weights"),
    (lambda c, d, y, t, a: a * F.cross_entropy(c, y) + (1 - a) * F.cross_entropy(d, t.softmax(-1)), "argmax"),
    (lambda c, d, y, t, a: a * F.cross_entropy(c, y.argmax(-1)) + (1 - a) * F.cross_entropy(d, t.argmax(-1)), "eq. 9"),
    (lambda c, d, y, t, a: a * F.cross_entropy(d, y) + (1 - a) * F.cross_entropy(c, t.argmax(-1)), "swapped"),
    (lambda c, d, y, t, a: a * F.kl_div(c.log_softmax(-1), y, reduction="batchmean") + (1 - a) * F.kl_div(
        d.log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True), "the loss"),
])
def test_titn_loss_catches_mistakes(wrong, needle):
    fails(checks.titn_loss, wrong, "titn_loss check failed", needle)


def test_titn_loss_soft_distillation_hint_and_shape():
    def soft(c, d, y, t, a):
        return a * F.cross_entropy(c, y) + (1 - a) * F.kl_div(d.log_softmax(-1), t.log_softmax(-1),
                                                              reduction="batchmean", log_target=True)
    fails(checks.titn_loss, soft, "soft distillation")
    fails(checks.titn_loss, lambda c, d, y, t, a: torch.zeros(3), "scalar")


# ------------------------------------------------------------------------ cutmix_box
def box_ok(lam, h, w, cx, cy):
    r = 0.5 * math.sqrt(1 - lam)
    x1, x2 = max(cx - int(r * w), 0), min(cx + int(r * w), w)
    y1, y2 = max(cy - int(r * h), 0), min(cy + int(r * h), h)
    return (x1, y1, x2, y2), 1 - (x2 - x1) * (y2 - y1) / (h * w)


def test_cutmix_box_accepts_correct(capsys):
    checks.cutmix_box(box_ok)
    assert "✓ cutmix_box passed: 6/6" in capsys.readouterr().out


def test_reference_box_is_torchvisions():
    # Replay torchvision's random draws (lambda, then the centre x, then y) and compare the pasted area.
    for seed in range(5):
        images = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])
        labels = torch.tensor([0, 1])
        cutmix = v2.CutMix(num_classes=2, alpha=0.5)
        torch.manual_seed(seed)
        mixed, soft = cutmix(images, labels)
        torch.manual_seed(seed)
        lam = float(torch.distributions.Beta(torch.tensor([0.5]), torch.tensor([0.5])).sample(()))
        cx, cy = int(torch.randint(32, size=(1,))), int(torch.randint(32, size=(1,)))
        (x1, y1, x2, y2), lam_adj = checks._reference_cutmix_box(lam, 32, 32, cx, cy)
        expected = torch.zeros(32, 32)
        expected[y1:y2, x1:x2] = 1  # image 0 receives a box of image 1 (the batch rolled by one)
        torch.testing.assert_close(mixed[0, 0], expected)
        assert soft[0, 0].item() == pytest.approx(lam_adj, abs=1e-6)


@pytest.mark.parametrize("wrong, needle", [
    (lambda lam, h, w, cx, cy: ((max(cx - int(math.sqrt(1 - lam) * w), 0), max(cy - int(math.sqrt(1 - lam) * h), 0),
                                 min(cx + int(math.sqrt(1 - lam) * w), w), min(cy + int(math.sqrt(1 - lam) * h), h)), lam),
     "half-side"),
    (lambda lam, h, w, cx, cy: ((cx - int(0.5 * math.sqrt(1 - lam) * w), cy - int(0.5 * math.sqrt(1 - lam) * h),
                                 cx + int(0.5 * math.sqrt(1 - lam) * w), cy + int(0.5 * math.sqrt(1 - lam) * h)), lam),
     "clip"),
    (lambda lam, h, w, cx, cy: (box_ok(lam, h, w, cx, cy)[0], lam), "real area"),
    (lambda lam, h, w, cx, cy: (box_ok(lam, h, w, cx, cy)[0], 1 - box_ok(lam, h, w, cx, cy)[1]), "*outside* the box"),
    (lambda lam, h, w, cx, cy: ((box_ok(lam, h, w, cx, cy)[0][1], box_ok(lam, h, w, cx, cy)[0][0],
                                 box_ok(lam, h, w, cx, cy)[0][3], box_ok(lam, h, w, cx, cy)[0][2]), box_ok(lam, h, w, cx, cy)[1]),
     "x runs along the width"),
])
def test_cutmix_box_catches_mistakes(wrong, needle):
    fails(checks.cutmix_box, wrong, "cutmix_box check failed", needle)


# ------------------------------------------------------------------------ attention_rollout
def rollout_ok(maps, token):
    t = maps[0].shape[-1]
    r = torch.eye(t)
    for a in maps:
        a = a.mean(1) + torch.eye(t)
        a = a / a.sum(-1, keepdim=True)
        r = a @ r
    return r[:, token, 1:-1]


def test_attention_rollout_accepts_correct(capsys):
    checks.attention_rollout(rollout_ok)
    with unguarded():
        checks.attention_rollout(lambda m, t: viz.attention_rollout(m, token=t))
    assert capsys.readouterr().out.count("✓ attention_rollout passed: 4/4") == 2


def _variant(identity=True, norm=True, reverse=False, lo=1, hi=-1, fuse="mean"):
    def fn(maps, token):
        t = maps[0].shape[-1]
        r = torch.eye(t)
        for a in (maps[::-1] if reverse else maps):
            a = a.mean(1) if fuse == "mean" else a.amax(1)
            a = a + torch.eye(t) if identity else a
            a = a / a.sum(-1, keepdim=True) if norm else a
            r = a @ r
        return r[:, token, lo:hi if hi != 0 else None]
    return fn


@pytest.mark.parametrize("wrong, needle", [
    (_variant(identity=False), "add the identity"),
    (_variant(norm=False), "renormalise"),
    (_variant(reverse=True), "layer order"),
    (_variant(fuse="max"), "maximum"),
    (_variant(lo=1, hi=0), "drop both"),
    (_variant(lo=2, hi=0), "[class, patches, distillation]"),
])
def test_attention_rollout_catches_mistakes(wrong, needle):
    fails(checks.attention_rollout, wrong, "attention_rollout check failed", needle)


def test_attention_rollout_in_place_and_rng():
    def in_place(maps, token):
        for a in maps:
            a += 0
            a.mul_(1.5)
        return rollout_ok(maps, token)
    fails(checks.attention_rollout, in_place, "in place")
    torch.manual_seed(5)
    want = torch.rand(2)
    torch.manual_seed(5)
    checks.attention_rollout(rollout_ok)
    assert torch.equal(torch.rand(2), want)
