"""Teacher networks and freezing (titn_edu.teachers; paper §4.2 Table 2, Alg. 1)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

from titn_edu import build_model, count_parameters, teachers
from titn_edu.teachers import build_teacher, freeze, is_frozen, list_teachers, teacher_logits, to_channels_last


@pytest.mark.parametrize("name", ["vgg16_bn", "cnn-small", "resnet18"])
@pytest.mark.parametrize("in_chans,num_classes", [(1, 10), (3, 100)])  # MNIST, CIFAR-100
def test_teachers_build_and_run_on_32x32(name, in_chans, num_classes):
    torch.manual_seed(0)
    model = build_teacher(name, num_classes=num_classes, in_chans=in_chans).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, 32, 32))
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()


def test_vgg16_bn_is_torchvisions_feature_stack_with_a_1x1_head():
    model = build_teacher("vgg16_bn", num_classes=10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 13
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 1, 1)
    assert model.head[1].in_features == 512
    assert count_parameters(model) == 14_990_922  # the figure in VGGTeacher's docstring
    assert count_parameters(build_teacher("vgg16_bn", num_classes=100)) == 15_037_092
    mnist = build_teacher("vgg16_bn", num_classes=10, in_chans=1)
    assert mnist.features[0].in_channels == 1 and count_parameters(mnist) == 14_989_770


def test_teacher_kwargs_are_passed_and_checked():
    narrow = build_teacher("cnn-small", num_classes=10, width=8)
    wide = build_teacher("cnn-small", num_classes=10, width=32)
    assert count_parameters(narrow) < count_parameters(wide)
    assert build_teacher("vgg16_bn", num_classes=10, hidden_dim=256).head[1].out_features == 256
    with pytest.raises(TypeError, match="cnn-small"):
        build_teacher("cnn-small", num_classes=10, depth=3)
    with pytest.raises(TypeError, match="resnet18"):
        build_teacher("resnet18", num_classes=10, width=3)
    with pytest.raises(ValueError, match="width"):
        build_teacher("cnn-small", num_classes=10, width=0)
    with pytest.raises(ValueError, match="num_classes"):
        build_teacher("vgg16_bn", num_classes=0)


def test_torchvision_models_get_their_first_conv_adapted():
    model = build_teacher("mobilenet_v3_small", num_classes=7, in_chans=1)
    assert model.features[0][0].in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    resnet = build_teacher("torchvision/resnet18", num_classes=10, in_chans=1)
    assert isinstance(resnet, torchvision.models.ResNet) and resnet.conv1.in_channels == 1


def test_vgg16_bn_features_match_torchvision_module_for_module():
    ours = build_teacher("vgg16_bn", num_classes=10).features
    vgg = torchvision.models.vgg  # the builder of vgg16_bn().features, without the 120 M-parameter classifier
    reference = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_unknown_teacher_lists_the_options():
    with pytest.raises(ValueError, match="Unknown teacher 'vgg17'") as info:
        build_teacher("vgg17", num_classes=10)
    for option in ("vgg16_bn", "cnn-small", "resnet18"):
        assert option in str(info.value)
    with pytest.raises(ValueError, match="Unknown teacher"):
        build_teacher("fasterrcnn_resnet50_fpn", num_classes=10)  # a detector, not a classifier
    with pytest.raises(TypeError):
        build_teacher(None, num_classes=10)


def test_list_teachers_puts_this_packages_first_without_duplicates():
    names = list_teachers()
    assert names[:2] == ["vgg16_bn", "cnn-small"] and "resnet18" in names
    assert len(names) == len(set(names))


def test_freeze_removes_gradients_and_stays_in_eval():
    torch.manual_seed(0)
    teacher = build_teacher("cnn-small", num_classes=10, in_chans=1, dropout=0.5)
    assert is_frozen(teacher) is False
    keys = list(teacher.state_dict())
    assert freeze(teacher) is teacher and is_frozen(teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    student = nn.Sequential(nn.Conv2d(1, 1, 1))
    student.teacher = teacher
    student.train()  # the training loop puts the whole model in train mode ...
    teacher.train(True)  # ... or the teacher itself
    assert student.training and not teacher.training and not any(m.training for m in teacher.modules())
    # eval behaviour: BatchNorm keeps its running statistics, dropout is off -> deterministic
    bn_before = teacher.features[0][1].running_mean.clone()
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    out = teacher(x)
    torch.testing.assert_close(teacher(x), out)
    assert torch.equal(teacher.features[0][1].running_mean, bn_before)
    out.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert list(teacher.state_dict()) == keys


def test_frozen_teacher_survives_copy_and_pickle():
    teacher = freeze(build_teacher("cnn-small", num_classes=10))
    for clone in (copy.deepcopy(teacher), pickle.loads(pickle.dumps(teacher))):
        clone.train()
        assert is_frozen(clone) and not clone.training
        assert clone.train.module is clone  # the copy keeps itself, not the original, in eval
    with pytest.raises(TypeError, match="nn.Module"):
        freeze("vgg16_bn")


def test_an_unfrozen_teacher_trains():
    teacher = build_teacher("cnn-small", num_classes=10, width=8).train()
    loss = nn.functional.cross_entropy(teacher(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in teacher.parameters())
    assert teachers.SmallCNN is type(teacher)


# ------------------------------------------------------------------ running a teacher fast


def _trained_like(name, in_chans=3):
    torch.manual_seed(0)
    model = freeze(build_teacher(name, num_classes=10, in_chans=in_chans))
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name,in_chans", [("cnn-small", 1), ("vgg16_bn", 3), ("resnet18", 3)])
def test_teacher_logits_channels_last_equals_the_plain_forward(name, in_chans):
    teacher = _trained_like(name, in_chans)
    images = torch.randn(6, in_chans, 32, 32)
    with torch.no_grad():
        expected = teacher(images)
    assert to_channels_last(teacher) is True
    conv = next(m for m in teacher.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    got = teacher_logits(teacher, images)
    assert got.dtype == torch.float32 and not got.is_inference() and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(teacher_logits(teacher, images, channels_last=True), got, rtol=0, atol=0)
    assert images.is_contiguous()  # the caller's batch is not changed


def test_teacher_logits_can_enter_the_students_loss_and_backward():
    teacher = _trained_like("cnn-small")
    to_channels_last(teacher)
    images = torch.randn(4, 3, 32, 32)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    t = teacher_logits(teacher, images)
    # soft distillation saves a function of the teacher's logits for backward; hard uses argmax
    loss = nn.functional.kl_div(student(images).log_softmax(-1), t.softmax(-1), reduction="batchmean")
    loss = loss + nn.functional.cross_entropy(student(images), t.argmax(-1))
    loss.backward()
    assert student[1].weight.grad is not None


def test_teacher_logits_bf16_is_close_and_float32_inside_autocast_is_exact():
    teacher = _trained_like("cnn-small")
    images = torch.randn(8, 3, 32, 32)
    exact = teacher_logits(teacher, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the student's region must not leak into the teacher
        inside = teacher_logits(teacher, images)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, exact, rtol=0, atol=0)
    half = teacher_logits(teacher, images, bf16=True)
    assert half.dtype == torch.float32 and not torch.equal(half, exact)  # it did run in bf16
    torch.testing.assert_close(half, exact, rtol=0.05, atol=0.05)


def test_teacher_logits_of_a_two_headed_teacher_is_the_mean_of_its_heads():
    torch.manual_seed(0)
    titn = build_model("titn", num_classes=10)
    assert to_channels_last(titn) is False  # no convolution: left as it is
    titn.train()  # two heads in training mode
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls, dist = titn(images)
    torch.testing.assert_close(teacher_logits(titn, images), (cls + dist) / 2)


def test_teacher_logits_rejects_non_tensors():
    with pytest.raises(TypeError, match="images must be a tensor"):
        teacher_logits(_trained_like("cnn-small"), [[0.0]])
    with pytest.raises(TypeError, match="nn.Module"):
        to_channels_last("vgg")


def test_resnet9_is_a_residual_cnn_that_learns():
    """ResNet-9: 8 conv layers and a head; width scales the channels; it fits a tiny batch."""
    from titn_edu.teachers import ResNet9

    model = build_teacher("resnet9", num_classes=10, width=16)
    assert isinstance(model, ResNet9) and model.config == {"name": "resnet9", "num_classes": 10, "in_chans": 3, "width": 16}
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 8
    assert count_parameters(model) == 412_954
    assert count_parameters(build_teacher("resnet9", num_classes=10)) == 6_573_130  # width 64
    mnist = build_teacher("resnet9", num_classes=10, in_chans=1, width=4)
    assert mnist(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 4, 4)
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    net = build_teacher("resnet9", num_classes=10, width=4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    with pytest.raises(ValueError, match="width"):
        build_teacher("resnet9", num_classes=10, width=0)
    with pytest.raises(TypeError, match="resnet9"):
        build_teacher("resnet9", num_classes=10, dropout=0.1)


def test_resnet9_logit_scale_multiplies_the_logits_and_is_rebuilt_from_checkpoints(tmp_path):
    from titn_edu import load_model, save_checkpoint

    torch.manual_seed(0)
    plain = build_teacher("resnet9", num_classes=10, width=4).eval()
    scaled = build_teacher("resnet9", num_classes=10, width=4, logit_scale=0.125).eval()
    scaled.load_state_dict(plain.state_dict())  # no new parameter: the same weights fit both
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(scaled(x), 0.125 * plain(x)) and scaled.config["logit_scale"] == 0.125
    assert "logit_scale" not in plain.config  # the shipped teachers' configs are unchanged
    save_checkpoint(tmp_path / "t.pt", scaled)
    assert torch.allclose(load_model(tmp_path / "t.pt").eval()(x), scaled(x))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="logit_scale"):
            build_teacher("resnet9", num_classes=10, width=4, logit_scale=bad)
