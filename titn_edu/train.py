"""The training engine: :func:`fit` trains a student (optionally distilled from a teacher) and
:func:`evaluate` reports the paper's Table 3 columns.

One training step (Algorithm 2, §3.5–3.6)::

    images, targets = mix(images, labels)          # CutMix: soft targets λ·onehot(a) + (1-λ)·onehot(b)
    class_logits, distill_logits = student(images)
    with torch.no_grad():
        teacher_logits = teacher(images)           # frozen, eval(), same mixed batch
    loss = α·CE(class_logits, targets) + (1-α)·CE(distill_logits, argmax teacher_logits)   # eq. 9–10

Optimisation presets (``optimizer=``):

* ``"paper"`` (alias ``"sgd"``, §4.1): SGD, momentum 0.9, weight decay 1e-4, lr 0.1, cosine
  annealing, batch 1024;
* ``"adamw"``: AdamW, lr 1e-3, weight decay 0.05 (not on biases, norms, tokens and position
  embeddings), linear warm-up then cosine, batch 128 — what small vision transformers usually need.

The learning rate follows the schedule step by step. Reliability is built in: every epoch writes
``last.pt`` (and ``best.pt`` when validation accuracy improves) and ``history.json`` atomically;
``resume=`` continues a run exactly where its last checkpoint left it; the first Ctrl-C (Jupyter:
"interrupt kernel") finishes the current step and returns the history so far; a non-finite loss
stops the run with an explanation and never touches ``best.pt``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .checkpoint import _unwrap, load_checkpoint, model_spec, save_checkpoint
from .device_data import DeviceLoader
from .losses import TITNLoss
from .metrics import _topk_hits, confusion_matrix, count_flops, precision_recall_f1
from .model import count_parameters
from .presets import OPTIMIZER_PRESETS, optimizer_preset
from .teachers import freeze, to_channels_last
from .teachers import teacher_logits as teacher_logits_fn
from .utils import resolve_device, save_json, seed_everything, set_rng_state

__all__ = ["fit", "evaluate", "History", "LivePlot", "OPTIMIZER_PRESETS", "build_optimizer", "warmup_cosine"]

_MIXINGS = ("cutmix", "mixup", "cutmix_or_mixup", "none")
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "pixel_pos")


# ============================================================================ history and plots
class History(list):
    """Per-epoch records (dicts), plus how the run ended.

    ``status`` is ``"completed"``, ``"interrupted"`` (Ctrl-C), ``"diverged"`` (non-finite loss),
    ``"stopped"`` (a callback asked to stop) or ``"running"``; ``message`` explains it.
    A ``History`` is a ``list``, so ``json.dumps(history)`` and ``pandas.DataFrame(history)`` work.
    """

    def __init__(self, records: Iterable[dict] = (), *, status: str = "running", message: str = "") -> None:
        super().__init__(dict(r) for r in records)
        self.status = status
        self.message = message

    def column(self, key: str) -> list[Any]:
        """The values of ``key`` over the epochs (``None`` where missing)."""
        return [r.get(key) for r in self]

    def best(self, key: str = "val_top1", mode: str = "max") -> dict | None:
        """The record with the best finite ``key`` (``mode`` ``"max"`` or ``"min"``), or ``None``."""
        rows = [r for r in self if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if not rows:
            return None
        return (max if mode == "max" else min)(rows, key=lambda r: r[key])

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "epochs": list(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``{"status", "message", "epochs": [...]}`` as JSON, atomically."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a file written by :meth:`save` (or a bare JSON list of records)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no history file at {str(path)!r}.")
        data = json.loads(path.read_text())
        if isinstance(data, list):
            return cls(data, status="completed")
        return cls(data.get("epochs", []), status=data.get("status", "completed"), message=data.get("message", ""))

    def plot(self, **kwargs: Any):
        """A matplotlib ``Figure`` of losses and accuracies over epochs (see :class:`LivePlot`)."""
        live = LivePlot(display=False, **kwargs)
        live.update(self)
        return live.figure

    def __repr__(self) -> str:
        last = self[-1] if self else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float))
        return f"History(epochs={len(self)}, status={self.status!r}{', last: ' + shown if shown else ''})"


class LivePlot:
    """A loss / accuracy figure that redraws in place in a notebook as epochs finish.

    ``LivePlot().update(history)`` after each epoch (``fit(..., live_plot=True)`` does it for you).
    Headless (scripts, tests, CI) it just keeps an up-to-date ``figure`` you can ``save(path)``.
    The figure is a plain :class:`matplotlib.figure.Figure`, so no GUI backend is ever needed.
    """

    def __init__(
        self,
        panels: Sequence[tuple[str, Sequence[str]]] = (
            ("loss", ("train_loss", "val_loss")),
            ("top-1 accuracy (%)", ("train_top1", "val_top1")),
        ),
        *,
        display: bool | None = None,
        figsize: tuple[float, float] = (9.0, 3.2),
    ) -> None:
        from matplotlib.figure import Figure

        self.panels = [(title, tuple(keys)) for title, keys in panels]
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.axes = self.figure.subplots(1, len(self.panels), squeeze=False)[0]
        self._display = _in_notebook() if display is None else bool(display)
        self._handle = None

    def update(self, history: Sequence[dict]) -> None:
        """Redraw from the records so far."""
        epochs = [r.get("epoch", i + 1) for i, r in enumerate(history)]
        for ax, (title, keys) in zip(self.axes, self.panels):
            ax.clear()
            for key in keys:
                values = [r.get(key) for r in history]
                points = [(e, v) for e, v in zip(epochs, values) if isinstance(v, (int, float)) and math.isfinite(v)]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=key)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        if self._display:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.figure, display_id=True)
            else:
                self._handle.update(self.figure)

    def save(self, path: str | os.PathLike) -> Path:
        """Save the figure (format from the suffix, e.g. ``.png``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(path)
        return path


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


# ============================================================================ optimisation
def warmup_cosine(total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up to 1, then cosine annealing to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; not on biases, norms, tokens and position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() <= 1 or name.split(".")[-1] in _NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, name: str = "adamw", *, lr: float | None = None, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """An optimizer from a preset of :data:`OPTIMIZER_PRESETS` (``"paper"``/``"sgd"`` or ``"adamw"``)."""
    preset = optimizer_preset(name)
    lr = preset["lr"] if lr is None else lr
    wd = preset["weight_decay"] if weight_decay is None else weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False).")
    if preset["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=preset["momentum"], weight_decay=wd)
    return torch.optim.AdamW(_param_groups(model, wd), lr=lr, betas=preset["betas"])


# ============================================================================ data helpers
def _as_dataset(data: Any, what: str) -> Dataset | DataLoader | DeviceLoader:
    if isinstance(data, (Dataset, DataLoader, DeviceLoader)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        images, labels = data
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{what}: images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length.")
        return TensorDataset(images, labels)
    raise TypeError(
        f"{what} must be a torch Dataset, a DataLoader, a titn_edu DeviceLoader or an (images, labels) pair of tensors; "
        f"got {type(data).__name__}."
    )


def _loader(data: Any, *, batch_size: int, train: bool, num_workers: int, pin: bool) -> DataLoader | DeviceLoader:
    if isinstance(data, (DataLoader, DeviceLoader)):
        return data
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the dataset is empty; check the data root and any limit/subset option.")
    # A last batch of one image breaks BatchNorm teachers and CutMix; drop only that case.
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and n % batch_size == 1 and n > 1,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=False,
    )


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"each batch must be (images, labels); got {type(batch).__name__}.")


def _num_classes(module: nn.Module) -> int | None:
    """Output classes of a classifier, when they can be read without running it."""
    module = _unwrap(module)
    n = getattr(module, "num_classes", None)
    if isinstance(n, int):
        return n
    config = getattr(module, "config", None)
    if isinstance(config, dict) and isinstance(config.get("num_classes"), int):
        return config["num_classes"]
    last = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _split_output(out: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"the model returned {len(out)} outputs; expected logits or (class_logits, distill_logits).")
        return out[0], out[1]
    return out, None


def _autocast(device: torch.device, amp: bool | str):
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class _GracefulInterrupt:
    """First SIGINT: finish the current step, then stop. Second SIGINT: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Interrupt received: finishing the current step, then stopping (interrupt again to stop at once).")

    def __enter__(self) -> _GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handler)
            except ValueError:
                self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ============================================================================ evaluation
@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool | str, progress: bool,
             desc: str = "eval") -> tuple[Tensor, Tensor, float]:
    """Predicted classes and true labels (CPU); the top-5 hit count, summed CE loss and one image's shape."""
    preds, labels_all, top5, loss_sum, shape = [], [], 0, 0.0, None
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images, labels = _unpack(batch)
        shape = tuple(images.shape[1:])
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits, _ = _split_output(model(images))
        logits = logits.float()
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0] or labels.is_floating_point():
            raise ValueError(f"evaluation labels must be class indices (batch,) = ({logits.shape[0]},); "
                             f"got {labels.dtype} {tuple(labels.shape)}.")
        if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"evaluation labels lie in [{int(labels.min())}, {int(labels.max())}] but the model "
                             f"predicts {logits.shape[1]} classes: check the dataset and the model's num_classes.")
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top5 += int(_topk_hits(logits, labels, (5,))[0])
        preds.append(logits.argmax(dim=-1).cpu())
        labels_all.append(labels.cpu())
    if not preds:
        raise ValueError("the evaluation data are empty.")
    return torch.cat(preds), torch.cat(labels_all), (top5, loss_sum, shape)


def _eval_summary(model, loader, device, amp, progress, desc="eval") -> dict[str, Any]:
    was_training = model.training
    model.eval()
    try:
        preds, labels, (top5, loss_sum, shape) = _predict(model, loader, device, amp, progress, desc)
    finally:
        model.train(was_training)
    n = labels.numel()
    return {
        "loss": loss_sum / n,
        "top1": 100.0 * (preds == labels).sum().item() / n,
        "top5": 100.0 * top5 / n,
        "preds": preds,
        "labels": labels,
        "num_samples": n,
        "input_shape": shape,
    }


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    num_classes: int | None = None,
    amp: bool = True,
    progress: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """The paper's Table 3 columns for ``model`` on ``data`` (a Dataset, DataLoader or (images, labels)).

    Returns a dict with ``top1``, ``top5`` (percent), macro ``precision``, ``recall``, ``f1``
    (fractions, see :mod:`titn_edu.metrics`), ``loss`` (cross-entropy), ``confusion_matrix``
    (list of rows: true class × predicted class), ``params``, ``gflops`` (per image, FLOPs =
    2 × MACs), ``num_samples``, ``num_classes`` and ``seconds`` (wall time of the pass over the data).
    The model is run in ``eval()`` mode (TITN: mean of its two heads) and left in its previous mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    _check_positive_int("batch_size", batch_size)
    if num_classes is not None:
        _check_positive_int("num_classes", num_classes)
    dev = resolve_device(device)
    model.to(dev)
    loader = _loader(_as_dataset(data, "data"), batch_size=batch_size, train=False, num_workers=num_workers,
                     pin=dev.type == "cuda")
    start = time.perf_counter()
    summary = _eval_summary(model, loader, dev, amp, progress)
    seconds = time.perf_counter() - start
    classes = num_classes or _num_classes(model) or int(max(summary["preds"].max(), summary["labels"].max())) + 1
    cm = confusion_matrix(summary["preds"], summary["labels"], classes)
    precision, recall, f1 = precision_recall_f1(cm)
    return {
        "top1": summary["top1"],
        "top5": summary["top5"],
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "loss": summary["loss"],
        "confusion_matrix": cm.tolist(),
        "params": count_parameters(model),
        "gflops": count_flops(model, summary["input_shape"]),
        "num_samples": summary["num_samples"],
        "num_classes": classes,
        "seconds": seconds,
    }


# ============================================================================ fit
def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return value


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
        positive and value == 0
    ):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}; got {value!r}.")
    return float(value)


def _resume_path(resume: str | os.PathLike) -> Path:
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume from {str(resume)!r}: no checkpoint there (expected a run folder holding last.pt, or a .pt file)."
        )
    return path


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    *,
    epochs: int,
    teacher: nn.Module | None = None,
    loss: Callable[..., Tensor] | None = None,
    optimizer: str | torch.optim.Optimizer = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    warmup_epochs: float | None = None,
    min_lr_ratio: float = 0.0,
    scheduler: str | Any = "cosine",
    mixing: str | Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = "cutmix",
    mix_alpha: float = 0.5,
    grad_clip: float | None = None,
    device: str | torch.device = "auto",
    output_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    seed: int | None = None,
    progress: bool = True,
    live_plot: bool | LivePlot = False,
    callbacks: Iterable[Callable[[dict], Any]] = (),
    amp: bool = True,
    teacher_bf16: bool | None = None,
    compile: bool = False,
    num_workers: int = 0,
    eval_batch_size: int | None = None,
    run_info: dict[str, Any] | None = None,
    test_data: Any = None,
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs; return its :class:`History`.

    Args:
        model: the student (e.g. :func:`titn_edu.build_model`), or any classifier (a teacher).
        train_data, val_data: Datasets of ``(image, label)``, DataLoaders,
            :class:`~titn_edu.device_data.DeviceLoader` (data and augmentation on the device, for
            GPUs), or ``(images, labels)`` tensor pairs. ``val_data`` (optional) is evaluated after every epoch and picks ``best.pt``.
        epochs: total number of epochs (with ``resume``: including those already done).
        teacher: a trained classifier with the student's number of classes. It is frozen, kept in
            ``eval()``, stored channels-last if it has convolutions, and run on the same mixed batch
            as the student by :func:`titn_edu.teachers.teacher_logits` (inference mode).
            With a single-head student the same logits serve both terms (classic distillation).
        loss: default ``TITNLoss()`` (eq. 10, hard, α = 0.5); any callable with its signature.
        optimizer: ``"paper"``/``"sgd"`` or ``"adamw"`` (see the module docstring), or an optimizer.
        lr, weight_decay, batch_size, warmup_epochs: override the preset's values.
        min_lr_ratio: the cosine schedule ends at ``lr * min_lr_ratio``.
        scheduler: ``"cosine"`` (warm-up + cosine, stepped every batch), ``"constant"``/``None``, or
            a ready LR scheduler (stepped every batch).
        mixing: ``"cutmix"`` (paper), ``"mixup"``, ``"cutmix_or_mixup"``, ``None``, or a callable
            ``(images, labels) -> (images, soft_targets)``; ``mix_alpha`` is its Beta parameter.
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        device: ``"auto"`` (CUDA → MPS → CPU) or a device. On CUDA, ``amp`` uses bf16 autocast and
            ``compile=True`` wraps the student in ``torch.compile``.
        output_dir: where ``last.pt``, ``best.pt`` and ``history.json`` go (``None``: nothing saved,
            unless resuming, then the resumed run's folder).
        resume: a run folder (uses its ``last.pt``) or a checkpoint to continue from. Model,
            optimizer, scheduler, epoch, history and RNG states are restored: with the same
            arguments the result equals an uninterrupted run.
        seed: seed every RNG first (see :func:`titn_edu.seed_everything`).
        progress: tqdm progress bars for epochs and batches.
        live_plot: ``True`` or a :class:`LivePlot` to draw losses/accuracies after every epoch.
        callbacks: functions called with each epoch's record after it is saved; one returning
            ``True`` stops training before the next epoch (status ``"stopped"``; after the last
            epoch the run is simply ``"completed"``).
        amp, compile, num_workers, eval_batch_size: speed options (see ``device``); DataLoader
            workers; batch size of the validation pass.
        teacher_bf16: run the teacher under bf16 autocast. ``None`` (default): on CUDA when ``amp``,
            never on CPU; ``True`` also on CPU, worth it on CPUs with native bf16 (AVX-512 BF16,
            AMX: ``python benchmarks/teacher_path.py`` measures it), at the cost of rare flips of
            near-tied teacher labels.
        run_info: plain values stored in every checkpoint (e.g. ``{"dataset": "mnist"}``).
        test_data: evaluated after every epoch for the record only (``test_loss``, ``test_top1``,
            ``test_top5``): learning curves against wall time. Never used to pick ``best.pt``.

    Training leaves the model in ``eval()`` mode (a TITN then returns the mean of its two heads).
    A model with convolutions (a CNN teacher) is stored channels-last for training (same values and
    ``state_dict``; ``python benchmarks/teacher_path.py --train`` measures the gain).
    Each record holds ``epoch``, ``lr`` (of the epoch's last step), ``seconds``, ``finished_at``
    (Unix time at the end of the epoch, after its evaluations), ``train_loss``, ``train_class_loss``,
    ``train_distill_loss``, ``train_top1``/``train_top5`` (class head against the dominant label
    of each mixed target), ``teacher_agreement`` (% of training images where the distillation
    head picks the teacher's class) and, with ``val_data``, ``val_loss``, ``val_top1``, ``val_top5``.
    """
    # ------------------------------------------------------------------ arguments
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    _check_positive_int("epochs", epochs)
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module (or None); got {type(teacher).__name__}.")
    if teacher is model:
        raise ValueError("teacher and student are the same module; distil from a separately trained teacher.")
    loss_fn = TITNLoss() if loss is None else loss
    if not callable(loss_fn):
        raise TypeError(f"loss must be callable like TITNLoss; got {type(loss_fn).__name__}.")
    if isinstance(optimizer, torch.optim.Optimizer):
        preset = dict(OPTIMIZER_PRESETS["adamw"], optimizer=None)
    else:
        preset = optimizer_preset(optimizer)
    batch_size = preset["batch_size"] if batch_size is None else batch_size
    _check_positive_int("batch_size", batch_size)
    eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size or max(batch_size, 256))
    if lr is not None:
        _check_number("lr", lr, positive=True)
    if weight_decay is not None:
        _check_number("weight_decay", weight_decay)
    if grad_clip is not None:
        _check_number("grad_clip", grad_clip, positive=True)
    if not 0.0 <= float(min_lr_ratio) <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1]; got {min_lr_ratio!r}.")
    _check_positive_int("num_workers", num_workers, minimum=0)
    callbacks = list(callbacks)
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be callables taking an epoch record.")
    if isinstance(scheduler, str) and scheduler.lower() not in ("cosine", "constant"):
        raise ValueError(f"unknown scheduler {scheduler!r}; use 'cosine', 'constant', None or an LR scheduler object.")
    if isinstance(mixing, str) and mixing.lower() not in _MIXINGS:
        raise ValueError(f"unknown mixing {mixing!r}; use one of {list(_MIXINGS)}, None or a callable.")
    if warmup_epochs is not None:
        _check_number("warmup_epochs", warmup_epochs)
    if seed is not None:
        seed_everything(seed)

    dev = resolve_device(device)
    if teacher_bf16 not in (None, True, False):
        raise TypeError(f"teacher_bf16 must be True, False or None (automatic); got {teacher_bf16!r}.")
    if teacher_bf16 is None:
        teacher_bf16 = bool(amp) and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    model.to(dev)
    channels_last = to_channels_last(model)  # a CNN (e.g. a teacher being trained): oneDNN's / cuDNN's fast layout
    if teacher is not None:
        freeze(teacher).to(dev)
        teacher_channels_last = to_channels_last(teacher)  # CNN teachers: oneDNN / tensor cores' preferred layout
        s_classes, t_classes = _num_classes(model), _num_classes(teacher)
        if s_classes is not None and t_classes is not None and s_classes != t_classes:
            raise ValueError(
                f"the teacher predicts {t_classes} classes but the student {s_classes}: both must be built "
                f"for the same dataset (num_classes={s_classes})."
            )

    train_ds = _as_dataset(train_data, "train_data")
    val_ds = _as_dataset(val_data, "val_data") if val_data is not None else None
    test_ds = _as_dataset(test_data, "test_data") if test_data is not None else None
    for what, ds in (("train_data", train_ds), ("val_data", val_ds), ("test_data", test_ds)):
        if isinstance(ds, DeviceLoader) and ds.device != dev:
            raise ValueError(f"{what} is a DeviceLoader on {ds.device} but training runs on {dev}; build it "
                             f"with device={str(dev)!r} (or train with device={str(ds.device)!r}).")
    pin = dev.type == "cuda"
    train_loader = _loader(train_ds, batch_size=batch_size, train=True, num_workers=num_workers, pin=pin)
    val_loader = _loader(val_ds, batch_size=eval_batch_size, train=False, num_workers=num_workers, pin=pin) if val_ds is not None else None
    test_loader = _loader(test_ds, batch_size=eval_batch_size, train=False, num_workers=num_workers, pin=pin) if test_ds is not None else None
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training data give no batch; use more data or a smaller batch_size.")

    num_classes = _num_classes(model)
    if callable(mixing) and not isinstance(mixing, str):
        mixer = mixing
    elif mixing is None or (isinstance(mixing, str) and mixing.lower() == "none"):
        mixer = None
    else:
        from .data import batch_mixer

        if num_classes is None:
            raise ValueError("cannot tell the model's number of classes for CutMix/MixUp; give the model a num_classes attribute.")
        mixer = batch_mixer(mixing, num_classes=num_classes, alpha=mix_alpha)

    # ------------------------------------------------------------------ optimiser and schedule
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
    else:
        opt = build_optimizer(model, optimizer, lr=lr, weight_decay=weight_decay)
    total_steps = epochs * steps_per_epoch
    if warmup_epochs is None:
        warmup_epochs = preset["warmup_epochs"] if preset["warmup_epochs"] is not None else min(5.0, 0.1 * epochs)
    warmup_steps = min(total_steps, round(warmup_epochs * steps_per_epoch))
    if scheduler is None or (isinstance(scheduler, str) and scheduler.lower() == "constant"):
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup_steps, 1.0))
    elif isinstance(scheduler, str):  # "cosine"
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup_steps, float(min_lr_ratio)))
    else:
        sched = scheduler

    # ------------------------------------------------------------------ output and resume
    history = History()
    start_epoch = 0
    monitor, mode = ("val_top1", "max") if val_loader is not None else ("train_loss", "min")
    best_value: float | None = None
    if resume is not None:
        ckpt_path = _resume_path(resume)
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        spec, saved_spec = model_spec(model), ckpt.get("model")
        if spec is not None and saved_spec is not None and spec != saved_spec:
            raise ValueError(
                f"cannot resume: {str(ckpt_path)!r} was saved from a different model "
                f"({saved_spec['kwargs']}) than the one given ({spec['kwargs']})."
            )
        _unwrap(model).load_state_dict(ckpt["state_dict"])
        try:
            if ckpt.get("optimizer") is not None:
                opt.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler") is not None:
                sched.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(
                f"cannot resume from {str(ckpt_path)!r}: its optimizer/scheduler state does not fit this run "
                f"({err}). Resume with the same optimizer settings as the original run."
            ) from None
        extra = ckpt.get("extra") or {}
        history = History(extra.get("history", []))
        best_value = (extra.get("best") or {}).get("value")
        start_epoch = int(ckpt.get("epoch") or 0)
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        if output_dir is None:
            output_dir = ckpt_path.parent
    out = Path(output_dir).expanduser() if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    train_model = torch.compile(model) if compile else model
    plot = live_plot if isinstance(live_plot, LivePlot) else (LivePlot() if live_plot else None)
    fit_config = {
        "epochs": epochs, "batch_size": batch_size, "optimizer": optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
        "lr": opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"]), "warmup_epochs": warmup_epochs,
        "mixing": mixing if isinstance(mixing, str) or mixing is None else "custom", "mix_alpha": mix_alpha,
        "seed": seed, "device": str(dev), "teacher": type(_unwrap(teacher)).__name__ if teacher is not None else None,
        "teacher_bf16": teacher_bf16 if teacher is not None else None,
        "loss": repr(loss_fn),
    }

    def save(record: dict, *, best: bool) -> None:
        if out is None:
            return
        state = dict(optimizer=opt, scheduler=sched if hasattr(sched, "state_dict") else None,
                     epoch=record["epoch"], metrics=record, history=list(history),
                     best={"key": monitor, "mode": mode, "value": best_value}, fit_config=fit_config,
                     run_info=dict(run_info or {}))
        save_checkpoint(out / "last.pt", model, **state)
        if best:
            save_checkpoint(out / "best.pt", model, **state)

    # ------------------------------------------------------------------ the loop
    if start_epoch >= epochs:
        history.status = "completed"
        history.message = f"nothing to do: the checkpoint already holds {start_epoch} of {epochs} epochs."
        model.eval()
        return history
    history.status = "running"
    epoch_bar = tqdm(range(start_epoch, epochs), desc="epochs", initial=start_epoch, total=epochs,
                     disable=not progress, dynamic_ncols=True)
    stop_reason: tuple[str, str] | None = None
    first_step = start_epoch == 0
    with _GracefulInterrupt() as interrupt:
        try:
            for epoch in epoch_bar:
                model.train()
                if teacher is not None:
                    teacher.eval()
                t0 = time.perf_counter()
                sums = {"loss": 0.0, "class": 0.0, "distill": 0.0}
                counts = torch.zeros(4, dtype=torch.long, device=dev)  # top1, top5, agree, agree-total
                seen, has_distill = 0, False
                batch_bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                                 disable=not progress, dynamic_ncols=True)
                for step, batch in enumerate(batch_bar):
                    images, labels = _unpack(batch)
                    images = images.to(dev, non_blocking=True)
                    if channels_last and images.dim() == 4:
                        images = images.contiguous(memory_format=torch.channels_last)
                    labels = labels.to(dev, non_blocking=True)
                    targets = labels
                    if mixer is not None:
                        images, targets = mixer(images, labels)
                    with _autocast(dev, amp):
                        class_logits, distill_logits = _split_output(train_model(images))
                        teacher_logits = None
                        if teacher is not None:
                            try:
                                teacher_logits = teacher_logits_fn(teacher, images, bf16=teacher_bf16,
                                                                   channels_last=teacher_channels_last)
                            except RuntimeError as err:
                                if not first_step:
                                    raise
                                raise ValueError(
                                    f"the teacher cannot process the training images {tuple(images.shape)}: "
                                    f"{str(err).splitlines()[0]}. Build it for the same dataset "
                                    f"(in_chans, image size) as the student."
                                ) from None
                            if distill_logits is None:  # single-head student: classic distillation
                                distill_logits = class_logits
                    if hasattr(loss_fn, "terms"):
                        terms = loss_fn.terms(class_logits, distill_logits, targets, teacher_logits)
                        total, class_loss, distill_loss = terms.total, terms.class_loss, terms.distill_loss
                    else:
                        total = loss_fn(class_logits, distill_logits, targets, teacher_logits)
                        class_loss = distill_loss = None
                    value = float(total.detach())
                    if not math.isfinite(value):
                        last = f"last.pt holds epoch {start_epoch if not history else history[-1]['epoch']}" if out else "nothing was saved"
                        stop_reason = ("diverged", (
                            f"training stopped: the loss became {value} at epoch {epoch + 1}, step {step + 1}. "
                            f"Likely causes: a learning rate too high for this model and batch size "
                            f"(lr={opt.param_groups[0]['lr']:.3g}; try 3-10x lower, a warm-up, or grad_clip=1.0), "
                            f"or bad data (NaN/inf pixels, wrong normalisation). The update was not applied; "
                            f"{last}; best.pt is untouched."
                        ))
                        break
                    lr_used = opt.param_groups[0]["lr"]
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    if grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    opt.step()
                    sched.step()
                    first_step = False

                    n = labels.shape[0]
                    seen += n
                    sums["loss"] += value * n
                    if class_loss is not None:
                        sums["class"] += float(class_loss.detach()) * n
                    if distill_loss is not None:
                        has_distill = True
                        sums["distill"] += float(distill_loss.detach()) * n
                    with torch.no_grad():
                        hard = targets.argmax(dim=-1) if targets.dim() == 2 else targets
                        counts[:2] += _topk_hits(class_logits.detach().float(), hard, (1, 5))
                        if teacher_logits is not None:
                            counts[2] += (distill_logits.argmax(-1) == teacher_logits.argmax(-1)).sum()
                            counts[3] += n
                    if progress:
                        batch_bar.set_postfix(loss=f"{value:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
                    if interrupt.requested:
                        break
                batch_bar.close()
                if stop_reason is not None:
                    break
                if interrupt.requested:
                    stop_reason = ("interrupted", _interrupted_message(epoch, history, out))
                    break

                # ---------------------------------------------------------- end of epoch
                top1, top5, agree, agree_n = counts.tolist()
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "lr": lr_used,
                    "train_loss": sums["loss"] / seen,
                    "train_class_loss": sums["class"] / seen if class_loss is not None else None,
                    "train_distill_loss": sums["distill"] / seen if has_distill else None,
                    "train_top1": 100.0 * top1 / seen,
                    "train_top5": 100.0 * top5 / seen,
                    "teacher_agreement": 100.0 * agree / agree_n if agree_n else None,
                }
                if val_loader is not None:
                    val = _eval_summary(model, val_loader, dev, amp, progress, desc="validate")
                    record.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
                if test_loader is not None:
                    test = _eval_summary(model, test_loader, dev, amp, progress, desc="test")
                    record.update(test_loss=test["loss"], test_top1=test["top1"], test_top5=test["top5"])
                record["seconds"] = time.perf_counter() - t0
                record["finished_at"] = time.time()
                history.append(record)
                current = record.get(monitor)
                improved = isinstance(current, float) and math.isfinite(current) and (
                    best_value is None or (current > best_value if mode == "max" else current < best_value)
                )
                if improved:
                    best_value = current
                save(record, best=improved)
                if out is not None:
                    history.save(out / "history.json")
                if progress:
                    epoch_bar.set_postfix({k: f"{record[k]:.4g}" for k in ("train_loss", "train_top1", "val_top1")
                                           if isinstance(record.get(k), float)}, refresh=False)
                if plot is not None:
                    plot.update(history)
                if [cb(record) for cb in callbacks].count(True) and epoch + 1 < epochs:
                    stop_reason = ("stopped", f"a callback stopped training after epoch {epoch + 1}.")
                    break
                if interrupt.requested:
                    stop_reason = ("interrupted", _interrupted_message(epoch + 1, history, out))
                    break
        except KeyboardInterrupt:
            stop_reason = ("interrupted", _interrupted_message(None, history, out))
        finally:
            epoch_bar.close()

    if stop_reason is None:
        history.status, history.message = "completed", f"trained {epochs} epochs."
    else:
        history.status, history.message = stop_reason
        if stop_reason[0] == "diverged":
            warnings.warn(history.message, RuntimeWarning, stacklevel=2)
        else:
            tqdm.write(history.message)
    if out is not None:
        history.save(out / "history.json")
    model.eval()
    return history


def _interrupted_message(epoch: int | None, history: History, out: Path | None) -> str:
    done = history[-1]["epoch"] if history else 0
    where = f"; {out / 'last.pt'} holds epoch {done} (resume with resume={str(out)!r})" if out is not None and history else ""
    return f"training interrupted after {done} complete epoch(s){where}."
