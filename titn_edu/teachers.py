"""Teacher networks for knowledge distillation (paper §3.5–3.6, §4.2 Table 2).

The student (TITN) learns its distillation token from a *teacher*'s predictions. The paper picks
VGG16-BN after comparing eight CNN teachers on CIFAR-100 (Table 2). Here:

* ``"vgg16_bn"`` — the paper's teacher, VGG16 with batch norm, adapted to 32×32 inputs;
* ``"cnn-small"`` — a small, fast CNN for CPU runs (reaches ~99 % on MNIST in about a minute);
* ``"resnet9"`` — a 9-layer residual CNN of the kind that holds the fast CIFAR-10 training records;
  with ``width=16`` it is the CPU recipes' teacher (``cifar10-quick``: about 80 % on CIFAR-10 after
  four epochs, three minutes on two cores);
* any torchvision classification model by name (``torchvision.models.list_models``), untrained,
  e.g. ``"resnet18"``; ``"torchvision/<name>"`` forces torchvision's own version of a shadowed name
  (``"torchvision/vgg16_bn"`` is the 224-sized original, the one behind the paper's parameter count).

:func:`freeze` turns a trained network into a teacher: no gradients, and ``eval()`` for good.
:func:`teacher_logits` runs it the fast way (inference mode, channels-last convolutions, optional
bf16); ``python benchmarks/teacher_path.py`` measures each of those choices.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "VGGTeacher", "SmallCNN", "ResNet9", "build_teacher", "list_teachers", "freeze", "is_frozen", "to_channels_last",
    "teacher_logits",
]

_TV_PREFIX = "torchvision/"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# VGG16 (configuration "D" of Simonyan & Zisserman): output channels of each 3×3 conv, "M" = 2×2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg_features(layout: tuple, in_chans: int) -> nn.Sequential:
    """Conv(3×3)-BN-ReLU layers and max-pools, laid out (and indexed) as ``torchvision.models.vgg16_bn().features``."""
    layers: list[nn.Module] = []
    for v in layout:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_chans, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_chans = v
    return nn.Sequential(*layers)


class VGGTeacher(nn.Module):
    """VGG16-BN for 32×32 images: torchvision's ``vgg16_bn`` feature stack and a small classifier.

    The 13 conv-BN-ReLU layers and 5 max-pools of ``torchvision.models.vgg16_bn`` (same modules, same
    indices, so its ``features`` weights load as they are) turn a 32×32 image
    into a 1×1×512 map. torchvision's classifier expects 7×7×512 (224-pixel inputs) and holds 120 M
    parameters in three fully connected layers; on 1×1 maps it would only see 49 copies of the same
    512 numbers, so it is replaced by ``512 → hidden_dim → num_classes`` with dropout, the usual
    CIFAR VGG head.

    Parameter count (``count_parameters(build_teacher("vgg16_bn", num_classes=K))``): 14,990,922
    for K = 10, 15,037,092 for K = 100; 14,989,770 for MNIST (``in_chans=1``, K = 10). The paper's
    134.30 M (CIFAR-10, Table 6) is torchvision's original with its ImageNet-sized classifier,
    available as ``build_teacher("torchvision/vgg16_bn", ...)``: 134,309,962 parameters for K = 10.
    """

    def __init__(self, *, num_classes: int, in_chans: int = 3, hidden_dim: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_chans", in_chans)
        _positive_int("hidden_dim", hidden_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {dropout!r}.")
        self.features = _vgg_features(VGG16_LAYOUT, in_chans)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1×1 for 32×32 inputs; also accepts larger images
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )
        for m in self.modules():  # as torchvision's VGG
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, 32, 32) -> (B, 512, 1, 1)."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, 512, h, w) -> logits (B, num_classes)."""
        return self.head(self.pool(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class SmallCNN(nn.Module):
    """A small, fast CNN teacher for CPU runs: three conv-BN-ReLU-max-pool stages, then a linear head.

    Stages on a 32×32 input, ``width`` = w: conv w @32² → pool → conv 2w @16² → pool → conv 4w @8² →
    pool → 4×4×4w map → flatten → linear (keeping the 4×4 layout learns digits faster than global
    pooling). The default w = 16 has 33,658 parameters for MNIST. Trained on MNIST with
    ``python benchmarks/bench_teacher.py --no-augment --threads 1 --workers 0`` (SGD, one-cycle, batch
    128) it reached 98.94 % test accuracy after one epoch and, with ``--epochs 2``, 99.21 % after two
    (88 s of CPU time on one core; the wall-clock time depends on the machine's load).
    """

    def __init__(self, *, num_classes: int, in_chans: int = 3, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_chans", in_chans)
        w = _positive_int("width", width)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {dropout!r}.")
        self.features = nn.Sequential(
            _conv_bn_relu(in_chans, w),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(4 * w * 16, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 4·width, H/8, W/8)."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Features -> logits (B, num_classes)."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BN-ReLU layers of the same width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """A 9-layer residual CNN for 32×32 images, the design behind the fast CIFAR-10 training records.

    With ``width`` = w: conv w → conv 2w, pool → residual(2w) → conv 4w, pool → conv 8w, pool →
    residual(8w) → global max-pool → linear. Eight 3×3 conv-BN-ReLU layers and the linear head make
    the nine. Most of the work happens at 16×16 and below, so it trains fast on a CPU: ``width=16``
    (412,954 parameters for CIFAR-10) runs about 1,250 training images/s on two cores, and reaches about
    80 % on CIFAR-10 after four epochs (``titn-edu train --preset cifar10-quick``). ``width=64`` is the
    full-size network (6.6 M parameters).

    ``logit_scale`` multiplies the logits. The fast CIFAR-10 records use 0.125: with 1.0 the logits of
    this network grow tenfold within its first ten SGD steps at a learning rate of 0.03 and training
    stalls when the warm-up is short; with 0.125 it trains smoothly at 0.2 (docs/gpu.md, "The CPU proxy run").
    """

    def __init__(self, *, num_classes: int, in_chans: int = 3, width: int = 64, logit_scale: float = 1.0) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_chans", in_chans)
        w = _positive_int("width", width)
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not 0 < logit_scale < math.inf:
            raise ValueError(f"logit_scale must be a positive number; got {logit_scale!r}.")
        self.logit_scale = float(logit_scale)
        self.features = nn.Sequential(
            _conv_bn_relu(in_chans, w),
            _conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),            # 16×16
            _Residual(2 * w),
            _conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),        # 8×8
            _conv_bn_relu(4 * w, 8 * w), nn.MaxPool2d(2),        # 4×4
            _Residual(8 * w),
        )
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 8·width, H/8, W/8)."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Features -> logits (B, num_classes), times ``logit_scale``."""
        return self.head(x) * self.logit_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_TEACHERS = {"vgg16_bn": VGGTeacher, "cnn-small": SmallCNN, "resnet9": ResNet9}


def _torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_teachers() -> list[str]:
    """Teacher names for :func:`build_teacher`: this package's own, then torchvision's classifiers."""
    own = list(_TEACHERS)
    return own + [n for n in _torchvision_names() if n not in _TEACHERS]


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the first ``Conv2d`` (3 input channels) for one with ``in_chans`` inputs, freshly initialised."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != 3:
                    raise ValueError(f"The first convolution of {type(model).__name__} takes {child.in_channels} "
                                     "channels, not 3; cannot adapt it to in_chans.")
                conv = nn.Conv2d(in_chans, child.out_channels, child.kernel_size, stride=child.stride,
                                 padding=child.padding, dilation=child.dilation, groups=child.groups,
                                 bias=child.bias is not None, padding_mode=child.padding_mode)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
                setattr(parent, child_name, conv)
                return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to in_chans={in_chans}; use in_chans=3.")


def build_teacher(name: str, *, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build an untrained teacher network by name; see :func:`list_teachers`.

    Args:
        name: ``"vgg16_bn"`` (:class:`VGGTeacher`; kwargs ``hidden_dim``, ``dropout``), ``"cnn-small"``
            (:class:`SmallCNN`; kwargs ``width``, ``dropout``), ``"resnet9"`` (:class:`ResNet9`; kwargs
            ``width``, ``logit_scale``), or a torchvision classification model
            (kwargs go to ``torchvision.models.get_model``; ``"torchvision/<name>"`` skips this
            package's version of a name).
        num_classes: number of output logits.
        in_chans: image channels (1 for MNIST, 3 for CIFAR). For torchvision models the first
            convolution is replaced when ``in_chans != 3``.

    Returns an ``nn.Module`` mapping ``(B, in_chans, H, W)`` images to ``(B, num_classes)`` logits.
    Some torchvision models need larger inputs than 32×32 (``inception_v3``: 75×75; ViTs and Swin
    need ``image_size``/window settings); those are the caller's choice.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string; got {type(name).__name__}.")
    _positive_int("num_classes", num_classes)
    _positive_int("in_chans", in_chans)
    config = dict(name=name, num_classes=num_classes, in_chans=in_chans, **kwargs)  # lets checkpoints rebuild it
    if name in _TEACHERS:
        try:
            model = _TEACHERS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
        except TypeError as err:  # unexpected keyword
            raise TypeError(f"build_teacher({name!r}): {err}") from None
        model.config = config
        return model
    tv_name = name[len(_TV_PREFIX):] if name.startswith(_TV_PREFIX) else name
    if tv_name not in _torchvision_names():
        raise ValueError(f"Unknown teacher {name!r}; expected one of {', '.join(list_teachers())} "
                         f"(or '{_TV_PREFIX}<name>' for torchvision's version).")
    if tv_name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)  # untrained: no auxiliary heads, plain logits out
        kwargs.setdefault("init_weights", True)
    if in_chans != 3 and kwargs.get("transform_input"):
        raise ValueError(f"{tv_name} with transform_input=True expects 3 channels; use in_chans=3.")
    try:
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:  # unexpected keyword
        raise TypeError(f"build_teacher({name!r}): {err}") from None
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    model.config = config
    return model


# --------------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------------


class _StayInEval:
    """Replaces a frozen module's ``train``: any ``train(mode)`` call leaves it in eval mode.

    A module-level class (not a lambda) so frozen models still pickle and deep-copy.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def freeze(model: nn.Module) -> nn.Module:
    """Make ``model`` a fixed teacher, in place, and return it (paper Alg. 1: θ_T is not trained).

    * every parameter gets ``requires_grad = False`` (no gradients, no optimizer updates);
    * the model is put in ``eval()`` mode (BatchNorm uses its running statistics, dropout is off)
      and stays there: a later ``model.train()`` — e.g. from a parent module — keeps it in eval.

    The state dict is unchanged. Call the teacher under ``torch.no_grad()`` in the training loop
    so no graph is kept for its activations.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze expects an nn.Module; got {type(model).__name__}.")
    model.requires_grad_(False)
    model.train = _StayInEval(model)  # instance attribute: shadows nn.Module.train for this object only
    model.eval()
    return model


def is_frozen(model: nn.Module) -> bool:
    """Whether ``model`` went through :func:`freeze` (and no parameter was unfrozen since)."""
    return isinstance(model.__dict__.get("train"), _StayInEval) and not any(p.requires_grad for p in model.parameters())



# --------------------------------------------------------------------------------------------------
# Running a teacher fast
# --------------------------------------------------------------------------------------------------


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def to_channels_last(model: nn.Module) -> bool:
    """Store a CNN's 4-D weights channels-last (NHWC), in place; return whether it has convolutions.

    oneDNN on CPUs and tensor cores on GPUs run convolutions fastest in this layout, and a
    channels-last network keeps its activations channels-last from layer to layer. Values, the
    ``state_dict`` keys and results (up to float rounding) are unchanged; a model without
    ``Conv2d`` (a TITN) is left as it is.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_channels_last expects an nn.Module; got {type(model).__name__}.")
    if _first_conv(model) is None:
        return False
    model.to(memory_format=torch.channels_last)
    return True


def teacher_logits(teacher: nn.Module, images: Tensor, *, bf16: bool = False, channels_last: bool | None = None) -> Tensor:
    """The teacher's logits for a batch, computed the fast way (paper Alg. 1: θ_T only predicts).

    * under ``torch.inference_mode()``: no graph, no version counters;
    * the images are made channels-last when the teacher's convolutions are (:func:`to_channels_last`);
      ``channels_last=True``/``False`` says so directly (``fit`` does, to skip looking for them
      at every step: about 0.2 ms for a TITN teacher);
    * ``bf16=True``: under bf16 autocast on the images' device (CUDA, or CPUs with native bf16 such
      as AVX-512 BF16 / AMX). The logits only pick hard labels (eq. 10) or are softened, so bf16
      rounding rarely matters, but it can flip a near tie; the default keeps float32, even inside
      an autocast region.

    Returns float32 logits ``(B, num_classes)`` as an ordinary tensor (usable in the student's loss);
    a two-headed teacher (a TITN) gives the mean of its heads, as its ``eval()`` forward does.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor (B, C, H, W); got {type(images).__name__}.")
    if channels_last is None:
        conv = _first_conv(teacher)
        channels_last = conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    kind = images.device.type
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        cast = nullcontext()
    elif bf16:
        cast = torch.autocast(kind, dtype=torch.bfloat16)
    else:  # float32 even inside the student's autocast region
        cast = torch.autocast(kind, enabled=False)
    with torch.inference_mode(), cast:
        out = teacher(images)
    if isinstance(out, (tuple, list)):
        out = (out[0].float() + out[1].float()) / 2
    out = out.float()
    # An op outside inference mode (here clone) turns an inference tensor into an ordinary one.
    return out.clone() if out.is_inference() else out
