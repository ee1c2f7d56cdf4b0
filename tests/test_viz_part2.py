"""Part II pictures: attention rollout (computed), confusion matrix, mistakes gallery, training curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import titn_edu  # noqa: E402
from titn_edu import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _maps(layers=3, b=2, h=2, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, t, generator=g).softmax(-1) for _ in range(layers)]


def test_rollout_by_hand_two_layers():
    maps = _maps(layers=2)
    eye = torch.eye(6)
    a1 = maps[0].mean(1) + eye
    a1 = a1 / a1.sum(-1, keepdim=True)
    a2 = maps[1].mean(1) + eye
    a2 = a2 / a2.sum(-1, keepdim=True)
    want = (a2 @ a1)[:, 0, 1:-1]
    torch.testing.assert_close(viz.attention_rollout(maps), want)
    torch.testing.assert_close(viz.attention_rollout(maps, token=-1), (a2 @ a1)[:, -1, 1:-1])


def test_rollout_rows_sum_to_one_before_dropping_tokens():
    maps = _maps(layers=4, t=7)
    full = viz.attention_rollout(maps, num_prefix=0, num_suffix=0)
    torch.testing.assert_close(full.sum(-1), torch.ones(2))
    # identity maps: rollout is the identity, so the class token sees only itself
    eye_maps = [torch.eye(5).expand(1, 2, 5, 5)] * 3
    assert viz.attention_rollout(eye_maps).abs().max() == 0


def test_rollout_follows_a_trained_like_path():
    # layer 1: class token copies patch 2; layer 0: patch 2 copies patch 3 -> rollout mass flows to patch 3
    t = 6
    a0 = torch.eye(t).clone()
    a0[3] = 0
    a0[3, 4] = 1  # token 3 (patch 2) reads token 4 (patch 3)
    a1 = torch.eye(t).clone()
    a1[0] = 0
    a1[0, 3] = 1
    r = viz.attention_rollout([a0[None, None], a1[None, None]])
    assert r.argmax().item() in (2, 3) and r[0, 3] > 0


def test_rollout_on_a_model_and_bad_inputs():
    torch.manual_seed(0)
    model = titn_edu.build_model("titn-tiny", num_classes=3, depth=2).eval()
    with titn_edu.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert viz.attention_rollout(maps.outer).shape == (2, 16)
    with pytest.raises(ValueError, match="outer maps"):
        viz.attention_rollout(maps.outer + maps.inner)
    with pytest.raises(ValueError, match="non-empty"):
        viz.attention_rollout([])
    with pytest.raises(ValueError, match="head_fusion"):
        viz.attention_rollout(maps.outer, head_fusion="sum")
    with pytest.raises(ValueError, match="token"):
        viz.attention_rollout(maps.outer, token=40)


def test_confusion_matrix_figure():
    cm = torch.tensor([[5, 1, 0], [0, 4, 2], [1, 0, 7]])
    fig = viz.confusion_matrix(cm, ["a", "b", "c"])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "20 images" in ax.get_title() and "80.0 %" in ax.get_title()
    assert {t.get_text() for t in ax.texts} >= {"5", "4", "7"}
    norm = viz.confusion_matrix(cm, normalize=True)
    assert "0.83" in {t.get_text() for t in norm.axes[0].texts}
    with pytest.raises(ValueError, match="square"):
        viz.confusion_matrix(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="class names"):
        viz.confusion_matrix(cm, ["a"])


def test_mistakes_gallery():
    images = torch.rand(6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    preds = torch.tensor([0, 2, 2, 1, 1, 0])
    fig = viz.mistakes_gallery(images, labels, preds, class_names=["zero", "one", "two"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["one → two", "zero → one", "two → zero"]
    assert "3 mistakes in 6 images" in fig._suptitle.get_text()
    logits = torch.nn.functional.one_hot(preds, 3).float()
    assert len([a for a in viz.mistakes_gallery(images, labels, logits, max_images=2).axes if a.get_title()]) == 2
    none = viz.mistakes_gallery(images, labels, labels)
    assert "no mistakes" in none.axes[0].texts[0].get_text()
    with pytest.raises(ValueError, match="one of each"):
        viz.mistakes_gallery(images, labels[:3], preds)


def test_training_curves():
    history = [dict(epoch=1, train_loss=1.0, train_class_loss=1.2, train_distill_loss=0.8, train_top1=60.0,
                    val_top1=70.0, teacher_agreement=75.0),
               dict(epoch=2, train_loss=0.5, train_class_loss=0.6, train_distill_loss=0.4, train_top1=80.0,
                    val_top1=85.0, teacher_agreement=90.0)]
    fig = viz.training_curves(history, title="run")
    labels = [[l.get_label() for l in ax.lines] for ax in fig.axes]
    assert labels == [["train_loss", "train_class_loss", "train_distill_loss"], ["train_top1", "val_top1"],
                      ["teacher_agreement"]]
    with pytest.raises(ValueError, match="empty"):
        viz.training_curves([])
