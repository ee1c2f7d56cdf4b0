"""Helpers for the course's training notebooks (07-10): one code path for the CPU budget and the paper run.

A *preset* is a dict of training settings as in ``titn_edu.presets.PRESETS`` (``titn-edu train --preset NAME``):
``dataset``, ``model``/``model_args``, ``teacher``/``teacher_args``, ``teacher_epochs``, ``teacher_optimizer``,
``teacher_lr``, ``teacher_batch_size``, ``teacher_mixing``, ``epochs``, ``optimizer``, ``lr``, ``batch_size``,
``warmup_epochs``, ``mixing``, ``mix_alpha``, ``distillation``, ``alpha``, ``tau``, ``augment``. A notebook
picks ``"mnist-quick"`` on a CPU or a ``"paper-*"`` preset on a GPU and calls the same functions:

>>> preset = get_preset("mnist-quick")
>>> train, test = load_data(preset, limit=3000, test_limit=1000)
>>> teacher, _ = train_teacher(preset, train, epochs=1)
>>> student, history = train_student(preset, train, test, teacher=teacher)

:func:`cached_teacher` keeps a trained teacher in ``outputs/`` (not committed) for the next notebook,
keyed by its settings, and trains one when none fits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "CPU_BUDGET",
    "get_preset",
    "load_data",
    "build_teacher_from",
    "build_student_from",
    "train_teacher",
    "train_student",
    "outputs_dir",
    "recorded",
    "cached_teacher",
    "cached_student",
    "shipped_teacher",
    "shipped_student",
    "continue_training",
]

#: The CPU budget of notebook 08's training run: class-balanced subsets of the training and test splits
#: (the recorded course runs of ``scripts/course_runs.py`` train on the same 10,000 training images).
CPU_BUDGET: dict[str, int] = {"limit": 10_000, "test_limit": 2_000}

_REQUIRED = ("dataset", "model", "epochs", "optimizer", "batch_size", "mixing", "alpha", "distillation")


def get_preset(name: str) -> dict[str, Any]:
    """A copy of the settings of ``titn-edu train --preset NAME`` (:func:`titn_edu.presets.get_preset`)."""
    from .presets import get_preset as preset_settings

    return preset_settings(name)


def _check_preset(preset: Any) -> dict[str, Any]:
    if not isinstance(preset, dict):
        raise TypeError(f"preset must be a dict of settings (see get_preset); got {type(preset).__name__}.")
    missing = [k for k in _REQUIRED if k not in preset]
    if missing:
        raise ValueError(f"the preset lacks {missing}; start from titn_edu.course.get_preset(name) and override keys.")
    return preset


def load_data(preset: dict[str, Any], *, limit: int | None = None, test_limit: int | None = None,
              seed: int = 0, root: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    """``(train, test)`` for the preset's dataset; ``limit``/``test_limit`` keep class-balanced subsets.

    Without augmentation (``preset["augment"]`` false) both splits are transformed once and held in
    memory as float tensors (fast on a CPU); with it the training split transforms every image anew.
    """
    from torchvision import tv_tensors

    from .data import get_dataset, get_transforms

    from .data import augmentation_level

    preset = _check_preset(preset)
    name = preset["dataset"]
    level = augmentation_level(preset.get("augment", False))

    def preloaded(train: bool, n: int | None) -> TensorDataset:
        raw = get_dataset(name, train=train, transform="raw", limit=n, seed=seed, root=root)
        tf = get_transforms(name, train=False)
        images = torch.cat([tf(tv_tensors.Image(raw.images[i:i + 4096])) for i in range(0, len(raw), 4096)])
        return TensorDataset(images, raw.targets.clone())

    test = preloaded(False, test_limit)
    if level != "none":
        train = get_dataset(name, train=True, limit=limit, seed=seed, root=root,
                            transform=get_transforms(name, train=True, augment=level))
    else:
        train = preloaded(True, limit)
    return train, test


def _shape(preset: dict[str, Any]) -> dict[str, int]:
    from .data import IN_CHANS, NUM_CLASSES

    name = preset["dataset"]
    return dict(num_classes=NUM_CLASSES[name], in_chans=IN_CHANS[name])


def build_teacher_from(preset: dict[str, Any]) -> nn.Module:
    """The preset's (untrained) teacher, e.g. ``cnn-small`` or the paper's ``vgg16_bn``."""
    from .teachers import build_teacher

    preset = _check_preset(preset)
    if not preset.get("teacher") or preset["teacher"] == "none":
        raise ValueError(f"the preset {preset.get('preset', '')!r} has no teacher (teacher={preset.get('teacher')!r}).")
    return build_teacher(preset["teacher"], **_shape(preset), **(preset.get("teacher_args") or {}))


def build_student_from(preset: dict[str, Any], model: str | None = None) -> nn.Module:
    """The preset's student; ``model`` names another ``build_model`` preset (its own defaults, no ``model_args``)."""
    from .model import build_model

    preset = _check_preset(preset)
    if model is not None:
        return build_model(model, **_shape(preset))
    return build_model(preset["model"], **_shape(preset), **(preset.get("model_args") or {}))


def train_teacher(preset: dict[str, Any], train_data: Any, val_data: Any = None, *, epochs: int | None = None,
                  seed: int = 0, **fit_kwargs: Any) -> tuple[nn.Module, Any]:
    """Build and train the preset's teacher with its teacher settings; return ``(teacher, history)``.

    ``epochs`` overrides ``preset["teacher_epochs"]``; other keyword arguments go to :func:`titn_edu.fit`
    (``device``, ``progress``, ``live_plot``, ``output_dir`` ...).
    """
    from .losses import TITNLoss
    from .train import fit

    preset = _check_preset(preset)
    torch.manual_seed(seed)
    teacher = build_teacher_from(preset)
    smoothing = _first(preset.get("teacher_label_smoothing"), preset.get("label_smoothing"), 0.0)
    settings = dict(
        epochs=epochs or preset.get("teacher_epochs") or preset["epochs"],
        optimizer=preset.get("teacher_optimizer") or preset["optimizer"],
        lr=preset.get("teacher_lr") or preset.get("lr"),
        weight_decay=_first(preset.get("teacher_weight_decay"), preset.get("weight_decay")),
        loss=TITNLoss(label_smoothing=smoothing),
        batch_size=preset.get("teacher_batch_size") or preset["batch_size"],
        mixing=preset.get("teacher_mixing") or preset["mixing"],
        mix_alpha=preset.get("mix_alpha", 0.5),
        warmup_epochs=preset.get("warmup_epochs"),
        seed=seed,
    )
    settings.update(fit_kwargs)
    history = fit(teacher, train_data, val_data, **settings)
    return teacher.eval(), history


def train_student(preset: dict[str, Any], train_data: Any, val_data: Any = None, *, teacher: nn.Module | None,
                  epochs: int | None = None, model: str | None = None, mixing: str | None = None, seed: int = 0,
                  **fit_kwargs: Any) -> tuple[nn.Module, Any]:
    """Build the student and train it with eq. 10 (``TITNLoss`` with the preset's α, kind and τ).

    ``model`` swaps the student for another ``build_model`` preset (ablations), ``mixing`` the batch
    mixing, ``epochs`` the budget; other keyword arguments go to :func:`titn_edu.fit`.
    Returns ``(student, history)``; the student is left in ``eval()`` mode.
    """
    from .losses import TITNLoss
    from .train import fit

    preset = _check_preset(preset)
    torch.manual_seed(seed)
    student = build_student_from(preset, model)
    loss = TITNLoss(alpha=preset["alpha"], distillation=preset["distillation"], tau=preset.get("tau", 1.0),
                    label_smoothing=preset.get("label_smoothing") or 0.0)
    settings = dict(
        epochs=epochs or preset["epochs"], teacher=teacher, loss=loss, optimizer=preset["optimizer"],
        lr=preset.get("lr"), weight_decay=preset.get("weight_decay"), batch_size=preset["batch_size"], mixing=mixing or preset["mixing"],
        mix_alpha=preset.get("mix_alpha", 0.5), warmup_epochs=preset.get("warmup_epochs"), seed=seed,
    )
    settings.update(fit_kwargs)
    history = fit(student, train_data, val_data, **settings)
    return student.eval(), history


def _repository() -> Path | None:
    """The repository checkout holding the working directory (e.g. ``notebooks/``), if any."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file() and (p / "titn_edu").is_dir()),
                None)


def outputs_dir() -> Path:
    """Where notebooks keep what they make: ``$TITN_EDU_OUTPUTS``, else ``outputs/`` in the repository
    (found from the working directory, e.g. ``notebooks/``), else ``./outputs``. Created if missing."""
    env = os.environ.get("TITN_EDU_OUTPUTS")
    path = Path(env).expanduser() if env else (_repository() or Path.cwd()) / "outputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def recorded(*parts: str) -> Path:
    """A path inside the repository's recorded runs, e.g. ``recorded("results", "course")`` or
    ``recorded("benchmarks", "results", "cifar10_quick_seed0.json")``: the notebooks read the runs the
    project recorded (``titn-edu train``'s ``metrics.json`` files), found from the working directory."""
    root = _repository()
    if root is None or not (root / parts[0]).exists():
        raise FileNotFoundError(
            f"the recorded runs ({'/'.join(parts)}) live in the project's repository; run the notebook from "
            f"a clone of it (its notebooks/ folder), where {'/'.join(parts)} exists."
        )
    return root.joinpath(*parts)


def _cached(path: Path, key: dict[str, Any], build: Any, train: Any, retrain: bool) -> tuple[nn.Module, list, bool]:
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    key = _plain(key)
    if path.is_file() and not retrain:
        try:
            ckpt = load_checkpoint(path)
            extra = ckpt.get("extra") or {}
            if extra.get("course_key") == key:
                model = build()
                model.load_state_dict(ckpt["state_dict"])
                return model.eval(), list(extra.get("history") or []), True
        except (CheckpointError, ValueError, KeyError, RuntimeError):
            pass  # unreadable, foreign or another architecture: train a new one and replace it
    model, history = train()
    save_checkpoint(path, model, course_key=key, history=list(history))
    return model, history, False


def cached_teacher(preset: dict[str, Any], train_data: Any, *, epochs: int | None = None, seed: int = 0,
                   path: str | os.PathLike | None = None, retrain: bool = False,
                   **fit_kwargs: Any) -> tuple[nn.Module, list, bool]:
    """A trained teacher from ``path`` (default ``outputs/teacher-<preset>.pt``) when it was trained with the
    same settings on as many images, else (or with ``retrain=True``) one trained by :func:`train_teacher`
    and saved there atomically. Returns ``(teacher, history, loaded_from_cache)``."""
    preset = _check_preset(preset)
    key = {k: preset.get(k) for k in ("dataset", "teacher", "teacher_args", "teacher_epochs", "teacher_optimizer",
                                      "teacher_lr", "teacher_batch_size", "teacher_mixing", "augment",
                                      "teacher_weight_decay", "teacher_label_smoothing")}
    key.update(epochs=epochs, seed=seed, images=len(train_data))
    path = Path(path) if path is not None else outputs_dir() / f"teacher-{preset.get('preset') or 'custom'}.pt"
    return _cached(path, key, lambda: build_teacher_from(preset),
                   lambda: train_teacher(preset, train_data, epochs=epochs, seed=seed, **fit_kwargs), retrain)


def cached_student(preset: dict[str, Any], train_data: Any, val_data: Any = None, *, teacher: nn.Module | None,
                   epochs: int | None = None, seed: int = 0, path: str | os.PathLike | None = None,
                   retrain: bool = False, **fit_kwargs: Any) -> tuple[nn.Module, list, bool]:
    """Like :func:`cached_teacher` for the student of :func:`train_student` (default file
    ``outputs/student-<preset>.pt``). Returns ``(student, history, loaded_from_cache)``."""
    preset = _check_preset(preset)
    key = {k: preset.get(k) for k in ("dataset", "model", "model_args", "optimizer", "lr", "batch_size", "mixing",
                                      "mix_alpha", "warmup_epochs", "distillation", "alpha", "tau", "augment",
                                      "weight_decay", "label_smoothing")}
    key.update(epochs=epochs, seed=seed, images=len(train_data), teacher=type(teacher).__name__ if teacher else None)
    path = Path(path) if path is not None else outputs_dir() / f"student-{preset.get('preset') or 'custom'}.pt"
    return _cached(path, key, lambda: build_student_from(preset),
                   lambda: train_student(preset, train_data, val_data, teacher=teacher, epochs=epochs, seed=seed,
                                         **fit_kwargs), retrain)


def shipped_teacher(dataset: str, *, name: str | None = None) -> nn.Module:
    """The package's trained teacher for ``dataset`` (``"cifar10"`` or ``"mnist"``), frozen, in ``eval()``
    mode: :func:`titn_edu.load_pretrained` of ``"teacher-<dataset>"``, the teacher of the shipped
    ``"titn-<dataset>"``; ``.pretrained_info`` holds its metrics.

    ``name`` picks another shipped teacher of ``dataset`` instead, e.g. ``"teacher-cifar10-quick"``: the
    ``cifar10-quick`` preset's 80 % ResNet-9, the teacher of the course's recorded experiments
    (notebooks 08 and 10).
    """
    from .pretrained import load_pretrained, pretrained_info
    from .teachers import freeze

    name = f"teacher-{dataset}" if name is None else name
    info = pretrained_info(name)
    if info["role"] != "teacher" or info["dataset"] != dataset:
        raise ValueError(f"{name!r} is a {info['dataset']} {info['role']}, not a {dataset} teacher; "
                         f"the shipped {dataset} teachers are {_shipped_teachers(dataset)}.")
    return freeze(load_pretrained(name))


def _shipped_teachers(dataset: str) -> list[str]:
    from .pretrained import list_pretrained, pretrained_info

    infos = {n: pretrained_info(n) for n in list_pretrained()}
    return [n for n, i in infos.items() if i["role"] == "teacher" and i["dataset"] == dataset]


def shipped_student(dataset: str) -> nn.Module:
    """The package's trained TITN for ``dataset``: :func:`titn_edu.load_pretrained` of ``"titn-<dataset>"``."""
    from .pretrained import load_pretrained

    return load_pretrained(f"titn-{dataset}")


def continue_training(preset: dict[str, Any], student: nn.Module, train_data: Any, val_data: Any = None, *,
                      teacher: nn.Module | None, epochs: int = 1, lr_scale: float = 0.1,
                      **fit_kwargs: Any) -> Any:
    """Train an already trained student a little more, in place (e.g. the shipped one for a minute
    on a CPU): the preset's loss, optimiser, mixing and batch size at ``lr_scale`` times its learning
    rate, a short warm-up and cosine decay, so the weights move without being thrown away.
    Returns the :class:`~titn_edu.train.History`; the student is left in ``eval()`` mode.
    """
    from .losses import TITNLoss
    from .presets import optimizer_preset
    from .train import fit

    preset = _check_preset(preset)
    if not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool) or not 0 < lr_scale <= 1:
        raise ValueError(f"lr_scale must be a number in (0, 1]; got {lr_scale!r}.")
    base_lr = preset.get("lr") or optimizer_preset(preset["optimizer"])["lr"]
    loss = TITNLoss(alpha=preset["alpha"], distillation=preset["distillation"], tau=preset.get("tau", 1.0),
                    label_smoothing=preset.get("label_smoothing") or 0.0)
    settings = dict(epochs=epochs, teacher=teacher, loss=loss, optimizer=preset["optimizer"], lr=base_lr * lr_scale,
                    weight_decay=preset.get("weight_decay"), batch_size=preset["batch_size"],
                    mixing=preset["mixing"], mix_alpha=preset.get("mix_alpha", 0.5), warmup_epochs=0.05 * epochs)
    settings.update(fit_kwargs)
    return fit(student, train_data, val_data, **settings)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _plain(obj: Any) -> Any:
    """JSON-like plain types (tuples become lists), so saved keys compare equal after loading."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
