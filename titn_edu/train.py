"""The training engine: :func:`fit` trains a student (optionally distilled from a teacher) and
:func:`evaluate` reports the paper's Table 3 columns.

``fit`` is a short loop over small pieces, each readable on its own::

    config = FitConfig(...)                  # the arguments, checked, with the optimiser preset's values
    run = _set_up(model, teacher, data...)   # seed, device, loaders, batch mixer, optimiser, LR schedule
    folder, history, done = _open_run_folder(run, config)      # resume: weights, optimiser, history, RNG
    for epoch in range(done, epochs):
        record = train_one_epoch(...)        # train_step (Algorithm 2, then the update) on every batch
        record.update(validation and test scores)
        history.append(record); folder.save(record, history, run)   # last.pt, best.pt, history.json
        stop if a callback returns True

One training step (Algorithm 2, §3.5–3.6)::

    images, targets = mix(images, labels)          # CutMix: soft targets λ·onehot(a) + (1-λ)·onehot(b)
    class_logits, distill_logits = student(images)
    with torch.no_grad():
        teacher_logits = teacher(images)           # frozen, eval(), same mixed batch
    loss = α·CE(class_logits, targets) + (1-α)·CE(distill_logits, argmax teacher_logits)   # eq. 9–10

Optimisation presets (``optimizer=``; the values are in :mod:`titn_edu.presets`):

* ``"paper"`` (alias ``"sgd"``, §4.1): SGD, momentum 0.9, weight decay 1e-4, lr 0.1, cosine
  annealing, batch 1024;
* ``"adamw"``: AdamW, lr 1e-3, weight decay 0.05 (not on biases, norms, tokens and position
  embeddings), linear warm-up then cosine, batch 128 — what small vision transformers usually need.

The learning rate follows the schedule step by step. Reliability is built in: every epoch writes
``last.pt`` (and ``best.pt`` when validation accuracy improves) and ``history.json`` atomically;
``resume=`` continues a run exactly where its last checkpoint left it; the first Ctrl-C (Jupyter:
"interrupt kernel") finishes the current step and returns the history so far; a non-finite loss
stops the run with an explanation and never touches ``best.pt``.

Several processes (``torchrun``, :mod:`titn_edu.distributed`): when every process of a job calls
``fit``, they train one model together with DistributedDataParallel, ``batch_size`` being the global
batch; the loop above is the same, with a few clearly named calls into :mod:`titn_edu.distributed`.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import _unwrap, load_checkpoint, model_spec, save_checkpoint
from .device_data import DeviceLoader
from .distributed import World
from .losses import TITNLoss
from .metrics import _topk_hits, confusion_matrix, count_flops, precision_recall_f1
from .model import count_parameters
from .presets import OPTIMIZER_PRESETS, optimizer_preset
from .teachers import freeze, to_channels_last
from .teachers import teacher_logits as teacher_logits_fn
from .utils import resolve_device, save_json, seed_everything, set_rng_state

__all__ = [
    "fit", "FitConfig", "RunFolder", "train_one_epoch", "train_step", "StepResult", "NonFiniteLossError",
    "evaluate", "History", "LivePlot", "OPTIMIZER_PRESETS", "build_optimizer", "warmup_cosine",
]

_MIXINGS = ("cutmix", "mixup", "cutmix_or_mixup", "none")
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "pixel_pos")


# ============================================================================ history and plots
class History(list):
    """Per-epoch records (dicts), plus how the run ended.

    ``status`` is ``"completed"``, ``"interrupted"`` (Ctrl-C), ``"diverged"`` (non-finite loss),
    ``"stopped"`` (a callback asked to stop) or ``"running"``; ``message`` explains it.
    A ``History`` is a ``list``, so ``json.dumps(history)`` and ``pandas.DataFrame(history)`` work.

    A record of :func:`fit` holds ``epoch``, ``lr`` (of the epoch's last step), ``seconds`` (the whole
    epoch), ``train_seconds`` (its training steps alone, without the evaluations), ``train_images``
    (images trained on), ``finished_at`` (Unix time at the end of the epoch, after its evaluations), ``train_loss``,
    ``train_class_loss``, ``train_distill_loss``, ``train_top1``/``train_top5`` (class head against the
    dominant label of each mixed target), ``teacher_agreement`` (% of training images where the
    distillation head picks the teacher's class), with ``val_data`` ``val_loss``, ``val_top1``,
    ``val_top5``, and with ``test_data`` ``test_loss``, ``test_top1``, ``test_top5``.
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


def _loader(data: Any, *, batch_size: int, train: bool, num_workers: int, pin: bool,
            world: World = World()) -> DataLoader | DeviceLoader:
    if world.distributed:  # several processes: this one's share (titn_edu.distributed.loader)
        return distributed.loader(data, batch_size=batch_size, train=train, world=world, num_workers=num_workers,
                                  pin=pin)
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


# ============================================================================ one training step
class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite. The update of that step was not applied."""


class StepResult(NamedTuple):
    """What :func:`train_step` reports about one batch."""

    loss: float  # the total loss (eq. 10); NaN or infinite: the update was not applied
    class_loss: float | None  # its label term, when the loss reports its terms (TITNLoss.terms)
    distill_loss: float | None  # its distillation term, likewise (None for a single-head model)
    lr: float  # the learning rate of this step
    size: int  # images in the batch
    hits: Tensor | None  # [top-1, top-5, agreements with the teacher, images compared], on the device


def train_step(
    student: nn.Module, images: Tensor, labels: Tensor, *, loss_fn: Callable[..., Any],
    optimizer: torch.optim.Optimizer, scheduler: Any = None, teacher: nn.Module | None = None,
    mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None, amp: bool | str = False,
    teacher_bf16: bool = False, teacher_channels_last: bool | None = None, grad_clip: float | None = None,
    first_step: bool = False,
) -> StepResult:
    """One optimisation step on a batch already on the device: Algorithm 2's loss, then the update.

    The batch is mixed (CutMix, §3.5.2: each image gets two labels with weights λ and 1-λ), the
    student predicts its class and distillation logits, the frozen ``teacher`` predicts on the
    *same* mixed images, and ``loss_fn`` (:class:`~titn_edu.losses.TITNLoss`: eq. 9-10) puts the
    label term on the class head and the teacher's labels on the distillation head. Then backward,
    optional gradient clipping, ``optimizer.step()`` and ``scheduler.step()`` (stepped every batch).

    A non-finite loss is returned as it is and the update is *not* applied (``hits`` is ``None``).
    With several processes (:mod:`titn_edu.distributed`: ``student`` wrapped in DDP) every process
    calls it on its share of the batch; ``loss`` is then the whole batch's (the mean over the
    processes), so a NaN on one process skips the update on all of them.
    ``teacher_bf16`` and ``teacher_channels_last`` go to :func:`titn_edu.teachers.teacher_logits`.
    ``first_step``: a teacher that cannot take these images raises a ``ValueError`` that says so.
    """
    targets = labels
    if mixer is not None:
        images, targets = mixer(images, labels)  # Alg. 2 line 5, CutMix: λ·onehot(a) + (1-λ)·onehot(b)
    with _autocast(images.device, amp):
        class_logits, distill_logits = _split_output(student(images))  # Alg. 2 line 2: p_θ(y|x)
        teacher_logits = None
        if teacher is not None:  # Alg. 2 line 3: T(y|x, θ_T), no gradient
            teacher_logits = _teacher_forward(teacher, images, teacher_bf16, teacher_channels_last, first_step)
            if distill_logits is None:  # a single-head student: classic distillation on its one head
                distill_logits = class_logits
    # Alg. 2 lines 4-10: α·L_CM(class head, mixed labels) + (1-α)·CE(distillation head, argmax teacher)
    total, class_loss, distill_loss = _loss_terms(loss_fn, class_logits, distill_logits, targets, teacher_logits)
    value = distributed.mean_over_processes(total.detach())  # one process: float(total)
    lr = optimizer.param_groups[0]["lr"]
    if not math.isfinite(value):
        return StepResult(value, None, None, lr, labels.shape[0], None)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    hits = _hits(class_logits, distill_logits, targets, teacher_logits)
    return StepResult(value, _as_float(class_loss), _as_float(distill_loss), lr, labels.shape[0], hits)


def _teacher_forward(teacher: nn.Module, images: Tensor, bf16: bool, channels_last: bool | None,
                     first_step: bool) -> Tensor:
    try:
        return teacher_logits_fn(teacher, images, bf16=bf16, channels_last=channels_last)
    except RuntimeError as err:
        if not first_step:  # it ran before: a real error (e.g. out of memory), not a mismatch
            raise
        raise ValueError(
            f"the teacher cannot process the training images {tuple(images.shape)}: "
            f"{str(err).splitlines()[0]}. Build it for the same dataset "
            f"(in_chans, image size) as the student."
        ) from None


def _loss_terms(loss_fn: Callable[..., Any], class_logits: Tensor, distill_logits: Tensor | None, targets: Tensor,
                teacher_logits: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The total loss and, when ``loss_fn`` reports them (``TITNLoss.terms``), its label and distillation terms."""
    if hasattr(loss_fn, "terms"):
        terms = loss_fn.terms(class_logits, distill_logits, targets, teacher_logits)
        return terms.total, terms.class_loss, terms.distill_loss
    return loss_fn(class_logits, distill_logits, targets, teacher_logits), None, None


@torch.no_grad()
def _hits(class_logits: Tensor, distill_logits: Tensor | None, targets: Tensor,
          teacher_logits: Tensor | None) -> Tensor:
    """``[top-1, top-5, teacher agreements, images compared]`` of one batch, as a tensor on its device."""
    hits = torch.zeros(4, dtype=torch.long, device=class_logits.device)
    hard = targets.argmax(dim=-1) if targets.dim() == 2 else targets  # a mixed image counts for its dominant label
    hits[:2] = _topk_hits(class_logits.detach().float(), hard, (1, 5))
    if teacher_logits is not None:
        hits[2] = (distill_logits.argmax(-1) == teacher_logits.argmax(-1)).sum()
        hits[3] = hard.shape[0]
    return hits


def _as_float(value: Tensor | None) -> float | None:
    return None if value is None else float(value.detach())


# ============================================================================ one epoch
@dataclass
class _EpochTotals:
    """Sums over the steps of an epoch; :meth:`record` turns them into the epoch's averages."""

    hits: Tensor  # [top-1, top-5, teacher agreements, images compared], on the device (no sync per step)
    images: int = 0
    loss: float = 0.0
    class_loss: float = 0.0
    distill_loss: float = 0.0
    has_class_loss: bool = False
    has_distill_loss: bool = False
    lr: float | None = None

    def add(self, step: StepResult) -> None:
        n = step.size
        self.images += n
        self.loss += step.loss * n
        if step.class_loss is not None:
            self.has_class_loss = True
            self.class_loss += step.class_loss * n
        if step.distill_loss is not None:
            self.has_distill_loss = True
            self.distill_loss += step.distill_loss * n
        self.hits += step.hits
        self.lr = step.lr

    def combine_processes(self) -> None:
        """With several processes: the sums over all of them (the whole epoch); nothing changes in one process."""
        if not distributed.current().distributed:
            return
        sums = torch.tensor([self.images, self.loss, self.class_loss, self.distill_loss, self.has_class_loss,
                             self.has_distill_loss], dtype=torch.float64)
        sums = distributed.sum_over_processes(torch.cat([sums, self.hits.cpu().double()]))
        self.images, self.loss, self.class_loss, self.distill_loss = int(sums[0]), *sums[1:4].tolist()
        self.has_class_loss, self.has_distill_loss = bool(sums[4]), bool(sums[5])
        self.hits = sums[6:].round().long()

    def record(self) -> dict[str, Any]:
        n = self.images
        top1, top5, agree, compared = self.hits.tolist()
        return {
            "lr": self.lr,
            "train_images": n,
            "train_loss": self.loss / n,
            "train_class_loss": self.class_loss / n if self.has_class_loss else None,
            "train_distill_loss": self.distill_loss / n if self.has_distill_loss else None,
            "train_top1": 100.0 * top1 / n,
            "train_top5": 100.0 * top5 / n,
            "teacher_agreement": 100.0 * agree / compared if compared else None,
        }


def train_one_epoch(
    student: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler: Any,
    loss_fn: Callable[..., Any], *, teacher: nn.Module | None = None,
    mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None, device: str | torch.device | None = None,
    amp: bool | str = False, teacher_bf16: bool = False, grad_clip: float | None = None, epoch: int = 0,
    epochs: int | None = None, progress: bool = False, stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train ``student`` for one pass over ``loader`` (:func:`train_step` on every batch); return the averages.

    The batches go to ``device`` (default: the student's), channels-last for a model with convolutions.
    ``student`` is put in ``train()`` mode, the (frozen) ``teacher`` in ``eval()`` mode. ``epoch`` (from 0)
    and ``epochs`` label the progress bar and messages; at ``epoch`` 0 the first step checks the teacher.

    Returns ``lr`` (of the last step), ``train_loss``, ``train_class_loss`` and ``train_distill_loss``
    (``None`` when the loss does not report them), ``train_top1``/``train_top5`` (class head against
    the dominant label of each mixed target) and ``teacher_agreement`` (% of images where the
    distillation head picks the teacher's class; ``None`` without a teacher), averaged over images.

    Raises :class:`NonFiniteLossError` when the loss becomes NaN or infinite, and
    ``KeyboardInterrupt`` after the current step once ``stop()`` is true (``fit`` passes its Ctrl-C
    handler: the first Ctrl-C lets the step finish).
    """
    device = torch.device(device) if device is not None else next(student.parameters()).device
    student.train()
    if teacher is not None:
        teacher.eval()
    channels_last = _has_convolutions(student)  # a CNN (e.g. a teacher being trained): oneDNN's / cuDNN's layout
    teacher_channels_last = teacher is not None and _has_convolutions(teacher)
    totals = _EpochTotals(hits=torch.zeros(4, dtype=torch.long, device=device))
    bar = tqdm(loader, desc=f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else ""), leave=False,
               disable=not progress, dynamic_ncols=True)
    try:
        for step, batch in enumerate(bar):
            images, labels = _to_device(batch, device, channels_last)
            result = train_step(student, images, labels, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                                teacher=teacher, mixer=mixer, amp=amp, teacher_bf16=teacher_bf16,
                                teacher_channels_last=teacher_channels_last, grad_clip=grad_clip,
                                first_step=epoch == 0 and step == 0)
            if not math.isfinite(result.loss):
                raise NonFiniteLossError(_divergence_advice(result, epoch, step))
            totals.add(result)
            if progress:
                bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            if stop is not None and distributed.any_process(stop()):  # several processes stop together
                raise KeyboardInterrupt  # the step is done; the rest of the epoch is not
    finally:
        bar.close()
    totals.combine_processes()  # several processes: the averages over the whole epoch, on every process
    if totals.images == 0:
        raise ValueError("the training data gave no batch.")
    return totals.record()


def _has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    images, labels = _unpack(batch)
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _divergence_advice(result: StepResult, epoch: int, step: int) -> str:
    return (
        f"training stopped: the loss became {result.loss} at epoch {epoch + 1}, step {step + 1}. "
        f"Likely causes: a learning rate too high for this model and batch size "
        f"(lr={result.lr:.3g}; try 3-10x lower, a warm-up, or grad_clip=1.0), "
        f"or bad data (NaN/inf pixels, wrong normalisation)."
    )


# ============================================================================ evaluation
@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool | str, progress: bool,
             desc: str = "eval") -> tuple[Tensor, Tensor, tuple[int, float, tuple | None]]:
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
    if not preds:  # no data (or, with several processes, no batch for this one)
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), (0, 0.0, None)
    return torch.cat(preds), torch.cat(labels_all), (top5, loss_sum, shape)


def _eval_summary(model, loader, device, amp, progress, desc="eval", shared: bool = False) -> dict[str, Any]:
    """Loss, top-1, top-5 and the predictions; ``shared``: every process scored its batches, put them together."""
    was_training = model.training
    model.eval()
    try:
        preds, labels, (top5, loss_sum, shape) = _predict(model, loader, device, amp, progress, desc)
    finally:
        model.train(was_training)
    if shared:
        preds, labels, (top5, loss_sum, shape) = _put_together(preds, labels, top5, loss_sum, shape)
    n = labels.numel()
    if n == 0:
        raise ValueError("the evaluation data are empty.")
    return {
        "loss": loss_sum / n,
        "top1": 100.0 * (preds == labels).sum().item() / n,
        "top5": 100.0 * top5 / n,
        "preds": preds,
        "labels": labels,
        "num_samples": n,
        "input_shape": shape,
    }


def _put_together(preds: Tensor, labels: Tensor, top5: int, loss_sum: float, shape: tuple | None) -> tuple:
    """The predictions of every process's batches (:func:`titn_edu.distributed.whole_batches`): each image once."""
    parts = distributed.gather((preds, labels, top5, loss_sum, shape))
    shapes = [part[4] for part in parts if part[4] is not None]
    return (torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts]),
            (sum(part[2] for part in parts), sum(part[3] for part in parts), shapes[0] if shapes else None))


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
    all_processes: bool = False,
) -> dict[str, Any]:
    """The paper's Table 3 columns for ``model`` on ``data`` (a Dataset, DataLoader or (images, labels)).

    Returns a dict with ``top1``, ``top5`` (percent), macro ``precision``, ``recall``, ``f1``
    (fractions, see :mod:`titn_edu.metrics`), ``loss`` (cross-entropy), ``confusion_matrix``
    (list of rows: true class × predicted class), ``params``, ``gflops`` (per image, FLOPs =
    2 × MACs), ``num_samples``, ``num_classes`` and ``seconds`` (wall time of the pass over the data).
    The model is run in ``eval()`` mode (TITN: mean of its two heads) and left in its previous mode.
    ``all_processes=True`` in a job of several processes (:mod:`titn_edu.distributed`): every process
    calls ``evaluate``, scores its share of ``data`` (a Dataset) and gets the metrics of all of it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    _check_positive_int("batch_size", batch_size)
    if num_classes is not None:
        _check_positive_int("num_classes", num_classes)
    dev = resolve_device(device)
    world = _world_on(dev) if all_processes else World()
    model.to(dev)
    loader = _loader(_as_dataset(data, "data"), batch_size=batch_size, train=False, num_workers=num_workers,
                     pin=dev.type == "cuda", world=world)
    start = time.perf_counter()
    summary = _eval_summary(model, loader, dev, amp, progress, shared=world.distributed)
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


# ============================================================================ fit: settings
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


def _check_models(model: Any, teacher: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module (or None); got {type(teacher).__name__}.")
    if teacher is model:
        raise ValueError("teacher and student are the same module; distil from a separately trained teacher.")


@dataclass
class FitConfig:
    """The settings of a :func:`fit` run: its keyword arguments, checked, with the preset's values filled in.

    Attributes:
        epochs: total number of epochs (with ``resume``: including those already done).
        loss: default ``TITNLoss()`` (eq. 10, hard, α = 0.5); any callable with its signature.
        optimizer: ``"paper"``/``"sgd"`` or ``"adamw"`` (:data:`titn_edu.presets.OPTIMIZER_PRESETS`), or a
            ready optimizer. ``lr``, ``weight_decay``, ``batch_size``, ``warmup_epochs`` override the preset's
            values (``None``: the preset's; ``warmup_epochs`` of ``"adamw"``: min(5, epochs / 10)).
            With several processes (:mod:`titn_edu.distributed`) ``batch_size`` is the global batch,
            shared by all of them, so the learning rate and its schedule do not depend on their number.
        min_lr_ratio: the cosine schedule ends at ``lr * min_lr_ratio``.
        scheduler: ``"cosine"`` (warm-up + cosine), ``"constant"``/``None``, or a ready LR scheduler;
            all are stepped every batch.
        mixing: ``"cutmix"`` (paper), ``"mixup"``, ``"cutmix_or_mixup"``, ``None``, or a callable
            ``(images, labels) -> (images, soft_targets)``; ``mix_alpha`` is its Beta parameter.
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        device: ``"auto"`` (CUDA → MPS → CPU) or a device. On CUDA, ``amp`` uses bf16 autocast and
            ``compile=True`` wraps the student in ``torch.compile``. A model with convolutions (a CNN
            teacher) is stored channels-last for training (same values and ``state_dict``; ``python
            benchmarks/teacher_path.py --train`` measures the gain).
        teacher_bf16: run the teacher under bf16 autocast. ``None``: on CUDA when ``amp``, never on CPU;
            ``True`` also on CPU, worth it on CPUs with native bf16 (AVX-512 BF16, AMX: ``python
            benchmarks/teacher_path.py`` measures it), at the cost of rare flips of near-tied teacher labels.
        output_dir: where ``last.pt``, ``best.pt`` and ``history.json`` go (:class:`RunFolder`; ``None``:
            nothing saved, unless resuming, then the resumed run's folder).
        resume: a run folder (uses its ``last.pt``) or a checkpoint to continue from. Model, optimizer,
            scheduler, epoch, history and RNG states are restored: with the same arguments the result
            equals an uninterrupted run.
        seed: seed every RNG first (see :func:`titn_edu.seed_everything`).
        progress: tqdm progress bars for epochs and batches.
        live_plot: ``True`` or a :class:`LivePlot` to draw losses/accuracies after every epoch.
        callbacks: functions called with each epoch's record after it is saved; one returning ``True``
            stops training before the next epoch (status ``"stopped"``; after the last epoch the run is
            simply ``"completed"``). All of them are called every epoch.
        num_workers, eval_batch_size: DataLoader workers; batch size of the validation pass
            (default: the larger of ``batch_size`` and 256).
        save_every: write ``last.pt`` and ``best.pt`` every this many epochs (and after the last
            epoch, and when a callback or Ctrl-C stops the run between epochs); ``history.json`` is
            written every epoch. 1 (default): every epoch. Larger values save time when epochs take
            seconds and a checkpoint tens of megabytes (a GPU run); a crash then loses at most
            ``save_every - 1`` epochs.
        run_info: plain values stored in every checkpoint (e.g. ``{"dataset": "mnist"}``).
    """

    epochs: int
    loss: Callable[..., Tensor] | None
    optimizer: str | torch.optim.Optimizer
    lr: float | None
    weight_decay: float | None
    batch_size: int | None
    warmup_epochs: float | None
    min_lr_ratio: float
    scheduler: str | Any
    mixing: str | Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None
    mix_alpha: float
    grad_clip: float | None
    device: str | torch.device
    output_dir: str | os.PathLike | None
    resume: str | os.PathLike | None
    seed: int | None
    progress: bool
    live_plot: bool | LivePlot
    callbacks: Iterable[Callable[[dict], Any]]
    amp: bool
    teacher_bf16: bool | None
    compile: bool
    num_workers: int
    eval_batch_size: int | None
    run_info: dict[str, Any] | None
    save_every: int
    preset: dict[str, Any] = field(init=False, repr=False)  # the optimiser preset's defaults

    def __post_init__(self) -> None:
        _check_positive_int("epochs", self.epochs)
        self.loss = TITNLoss() if self.loss is None else self.loss
        if not callable(self.loss):
            raise TypeError(f"loss must be callable like TITNLoss; got {type(self.loss).__name__}.")
        if isinstance(self.optimizer, torch.optim.Optimizer):
            self.preset = dict(OPTIMIZER_PRESETS["adamw"], optimizer=None)
        else:
            self.preset = optimizer_preset(self.optimizer)
        if self.batch_size is None:
            self.batch_size = self.preset["batch_size"]
        _check_positive_int("batch_size", self.batch_size)
        self.eval_batch_size = _check_positive_int("eval_batch_size", self.eval_batch_size or max(self.batch_size, 256))
        self._check_the_rest()
        if self.warmup_epochs is None:
            preset_warmup = self.preset["warmup_epochs"]
            self.warmup_epochs = preset_warmup if preset_warmup is not None else min(5.0, 0.1 * self.epochs)

    def _check_the_rest(self) -> None:
        if self.lr is not None:
            _check_number("lr", self.lr, positive=True)
        if self.weight_decay is not None:
            _check_number("weight_decay", self.weight_decay)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, positive=True)
        if not 0.0 <= float(self.min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio!r}.")
        _check_positive_int("num_workers", self.num_workers, minimum=0)
        _check_positive_int("save_every", self.save_every)
        self.callbacks = list(self.callbacks)
        if not all(callable(c) for c in self.callbacks):
            raise TypeError("callbacks must be callables taking an epoch record.")
        if isinstance(self.scheduler, str) and self.scheduler.lower() not in ("cosine", "constant"):
            raise ValueError(f"unknown scheduler {self.scheduler!r}; use 'cosine', 'constant', None or an LR scheduler object.")
        if isinstance(self.mixing, str) and self.mixing.lower() not in _MIXINGS:
            raise ValueError(f"unknown mixing {self.mixing!r}; use one of {list(_MIXINGS)}, None or a callable.")
        if self.warmup_epochs is not None:
            _check_number("warmup_epochs", self.warmup_epochs)
        if self.teacher_bf16 not in (None, True, False):
            raise TypeError(f"teacher_bf16 must be True, False or None (automatic); got {self.teacher_bf16!r}.")


# ============================================================================ fit: set-up
@dataclass
class _Run:
    """What :func:`_set_up` prepares for the epochs of a run."""

    model: nn.Module  # the student (or any classifier), on the device
    train_model: nn.Module  # the same, or torch.compile(model)
    teacher: nn.Module | None  # frozen, on the device
    device: torch.device
    teacher_bf16: bool
    train_loader: DataLoader | DeviceLoader
    val_loader: DataLoader | DeviceLoader | None
    test_loader: DataLoader | DeviceLoader | None
    mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    world: World = World()  # the processes training together (titn_edu.distributed); one by default


def _set_up(model: nn.Module, teacher: nn.Module | None, train_data: Any, val_data: Any, test_data: Any,
            config: FitConfig) -> _Run:
    """Seed; put the models on the device; wrap the data in loaders; build the mixer, optimiser and schedule.

    In a job of several processes (:mod:`titn_edu.distributed`) each process loads its share of the
    data, trains the student wrapped in DistributedDataParallel and, unless it is rank 0, shows no progress.
    """
    if config.seed is not None:
        seed_everything(config.seed)
    device = resolve_device(config.device)
    world = _world_on(device)
    if world.distributed:  # first, before a process could refuse something alone: the same run everywhere
        identity = _run_identity(model, teacher, _as_dataset(train_data, "train_data"), config)
        distributed.check_same("the run's settings, models or data", identity)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU
        config.progress = config.progress and world.rank == 0
    teacher_bf16 = config.teacher_bf16
    if teacher_bf16 is None:
        teacher_bf16 = bool(config.amp) and device.type == "cuda" and torch.cuda.is_bf16_supported()
    _place_models(model, teacher, device)
    train_loader, val_loader, test_loader = _loaders(train_data, val_data, test_data, config, device, world)
    mixer = _mixer(config.mixing, config.mix_alpha, model)
    optimizer, scheduler = _optimizer_and_schedule(model, config, steps_per_epoch=len(train_loader))
    train_model = distributed.wrap(model, device)  # several processes: DDP averages the gradients
    train_model = torch.compile(train_model) if config.compile else train_model
    return _Run(model=model, train_model=train_model, teacher=teacher, device=device, teacher_bf16=teacher_bf16,
                train_loader=train_loader, val_loader=val_loader, test_loader=test_loader, mixer=mixer,
                optimizer=optimizer, scheduler=scheduler, world=world)


def _world_on(device: torch.device) -> World:
    """The processes this one trains with (:mod:`titn_edu.distributed`), checked against its device."""
    world = distributed.current()
    if world.distributed:
        distributed.check_backend(world.backend, device)
    return world


def _run_identity(model: nn.Module, teacher: nn.Module | None, train_data: Dataset | DataLoader | DeviceLoader,
                  config: FitConfig) -> dict[str, Any]:
    """What every process of a job must agree on: the settings, the models and the amount of training data."""
    plain = (bool, int, float, str, type(None))
    settings = {k: v for k, v in vars(config).items()
                if isinstance(v, plain) and k not in ("device", "progress", "num_workers")}
    images = train_data.images.shape[0] if isinstance(train_data, DeviceLoader) else len(train_data)
    models = {name: (model_spec(m) or type(_unwrap(m)).__name__, count_parameters(m)) if m is not None else None
              for name, m in (("student", model), ("teacher", teacher))}
    return dict(settings, **models, loss=repr(config.loss) if isinstance(config.loss, nn.Module) else "custom",
                optimizer_kind=type(config.optimizer).__name__, mixing_kind=type(config.mixing).__name__,
                training_images=images)


def _place_models(model: nn.Module, teacher: nn.Module | None, device: torch.device) -> None:
    """Both models on the device, CNNs channels-last; the teacher frozen and checked for the student's classes."""
    model.to(device)
    to_channels_last(model)  # a CNN (e.g. a teacher being trained): oneDNN's / cuDNN's fast layout
    if teacher is None:
        return
    freeze(teacher).to(device)
    to_channels_last(teacher)  # CNN teachers: oneDNN / tensor cores' preferred layout
    s_classes, t_classes = _num_classes(model), _num_classes(teacher)
    if s_classes is not None and t_classes is not None and s_classes != t_classes:
        raise ValueError(
            f"the teacher predicts {t_classes} classes but the student {s_classes}: both must be built "
            f"for the same dataset (num_classes={s_classes})."
        )


def _loaders(train_data: Any, val_data: Any, test_data: Any, config: FitConfig, device: torch.device,
             world: World) -> tuple:
    """``(train, val, test)`` loaders (``None`` where no data was given)."""
    train_ds = _as_dataset(train_data, "train_data")
    val_ds = _as_dataset(val_data, "val_data") if val_data is not None else None
    test_ds = _as_dataset(test_data, "test_data") if test_data is not None else None
    for what, ds in (("train_data", train_ds), ("val_data", val_ds), ("test_data", test_ds)):
        if isinstance(ds, DeviceLoader) and ds.device != device:
            raise ValueError(f"{what} is a DeviceLoader on {ds.device} but training runs on {device}; build it "
                             f"with device={str(device)!r} (or train with device={str(ds.device)!r}).")
    common = dict(num_workers=config.num_workers, pin=device.type == "cuda", world=world)
    train_loader = _loader(train_ds, batch_size=config.batch_size, train=True, **common)
    val_loader = _loader(val_ds, batch_size=config.eval_batch_size, train=False, **common) if val_ds is not None else None
    test_loader = _loader(test_ds, batch_size=config.eval_batch_size, train=False, **common) if test_ds is not None else None
    if len(train_loader) == 0:
        raise ValueError("the training data give no batch; use more data or a smaller batch_size.")
    return train_loader, val_loader, test_loader


def _mixer(mixing: Any, mix_alpha: float, model: nn.Module) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """The batch mixer (CutMix, MixUp, ...) for ``mixing``, or ``None``."""
    if callable(mixing) and not isinstance(mixing, str):
        return mixing
    if mixing is None or (isinstance(mixing, str) and mixing.lower() == "none"):
        return None
    from .data import batch_mixer

    num_classes = _num_classes(model)
    if num_classes is None:
        raise ValueError("cannot tell the model's number of classes for CutMix/MixUp; give the model a num_classes attribute.")
    return batch_mixer(mixing, num_classes=num_classes, alpha=mix_alpha)


def _optimizer_and_schedule(model: nn.Module, config: FitConfig, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser (from the preset, or the one given) and its per-step learning-rate schedule."""
    if isinstance(config.optimizer, torch.optim.Optimizer):
        optimizer = config.optimizer
        if config.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = config.lr
    else:
        optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(config.warmup_epochs * steps_per_epoch))
    scheduler = config.scheduler
    if scheduler is None or (isinstance(scheduler, str) and scheduler.lower() == "constant"):
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps, 1.0))
    elif isinstance(scheduler, str):  # "cosine"
        factor = warmup_cosine(total_steps, warmup_steps, float(config.min_lr_ratio))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


# ============================================================================ fit: the run folder
@dataclass
class RunFolder:
    """Where a run keeps its progress (``path=None``: nothing is written; the best value is still tracked).

    After every epoch :meth:`save` writes ``history.json`` and, at a checkpoint (every epoch unless
    ``fit(save_every=N)``), ``last.pt`` (model, optimizer, scheduler, RNG states, the history so far:
    everything ``resume`` needs) and ``best.pt`` too when ``monitor`` improved on the best saved value,
    each atomically (:func:`titn_edu.save_checkpoint`): a crash never leaves a half-written file, and a
    run that diverges never touches ``best.pt``. ``saved_epoch`` is the epoch ``last.pt`` holds. In a
    job of several processes only rank 0 writes (``writer``), and :meth:`save` returns on every process
    once it has.
    """

    path: Path | None
    monitor: str  # the record key that picks best.pt: val_top1 with validation data, else train_loss
    mode: str  # "max" or "min"
    best: float | None = None  # the best value of `monitor` so far
    fit_config: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint, as run_info
    run_info: dict[str, Any] = field(default_factory=dict)
    writer: bool = True  # False: another process (rank 0 of a job, titn_edu.distributed) writes the files
    saved_epoch: int = 0  # the epoch of the last checkpoint (0: none yet)

    def improves(self, value: Any) -> bool:
        return isinstance(value, float) and math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )

    def save(self, record: dict[str, Any], history: History, run: _Run, *, checkpoint: bool = True) -> None:
        """Save the epoch of ``record`` (already the last of ``history``); ``checkpoint=False``: ``history.json`` only."""
        improved = checkpoint and self.improves(record.get(self.monitor))
        if improved:
            self.best = record[self.monitor]
        if checkpoint:
            self.saved_epoch = record["epoch"]
        if self.path is None:
            return
        if self.writer:
            if checkpoint:
                self._write(record, history, run, improved)
            else:
                history.save(self.path / "history.json")
        distributed.barrier()  # several processes: the files are on disk before any of them goes on

    def catch_up(self, record: dict[str, Any], history: History, run: _Run) -> None:
        """Write the checkpoint of ``record``'s epoch if the last one is older (a run stopping between epochs)."""
        if self.saved_epoch != record["epoch"]:
            self.save(record, history, run, checkpoint=True)

    def _write(self, record: dict[str, Any], history: History, run: _Run, improved: bool) -> None:
        state = dict(optimizer=run.optimizer, scheduler=run.scheduler if hasattr(run.scheduler, "state_dict") else None,
                     epoch=record["epoch"], metrics=record, history=list(history),
                     best={"key": self.monitor, "mode": self.mode, "value": self.best}, fit_config=self.fit_config,
                     run_info=self.run_info)
        save_checkpoint(self.path / "last.pt", run.model, **state)
        if improved:
            save_checkpoint(self.path / "best.pt", run.model, **state)
        history.save(self.path / "history.json")

    def save_history(self, history: History) -> None:
        if self.path is not None and self.writer:
            history.save(self.path / "history.json")

    def last_saved(self) -> str:
        """What ``last.pt`` holds, for messages."""
        if self.path is None:
            return "nothing was saved"
        return f"last.pt holds epoch {self.saved_epoch}"


def _open_run_folder(run: _Run, config: FitConfig) -> tuple[RunFolder, History, int]:
    """The run folder, the history so far and the epochs already done (0, or what ``resume`` holds)."""
    history, done, best, folder = History(), 0, None, config.output_dir
    if config.resume is not None:
        history, done, best, saved_in = _resume(config.resume, run)
        folder = saved_in if folder is None else folder
    path = Path(folder).expanduser() if folder is not None else None
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    monitor, mode = ("val_top1", "max") if run.val_loader is not None else ("train_loss", "min")
    folder = RunFolder(path, monitor, mode, best, _fit_config(run, config), dict(config.run_info or {}),
                       writer=run.world.rank == 0, saved_epoch=done)
    return folder, history, done


def _resume_path(resume: str | os.PathLike) -> Path:
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume from {str(resume)!r}: no checkpoint there (expected a run folder holding last.pt, or a .pt file)."
        )
    return path


def _resume(resume: str | os.PathLike, run: _Run) -> tuple[History, int, float | None, Path]:
    """Load a checkpoint into the run's model, optimizer and scheduler and restore the RNG states.

    Returns the history so far, the epochs done, the best monitored value and the checkpoint's folder.
    """
    path = _resume_path(resume)
    ckpt = load_checkpoint(path, map_location="cpu")
    spec, saved_spec = model_spec(run.model), ckpt.get("model")
    if spec is not None and saved_spec is not None and spec != saved_spec:
        raise ValueError(
            f"cannot resume: {str(path)!r} was saved from a different model "
            f"({saved_spec['kwargs']}) than the one given ({spec['kwargs']})."
        )
    _unwrap(run.model).load_state_dict(ckpt["state_dict"])
    try:
        if ckpt.get("optimizer") is not None:
            run.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") is not None:
            run.scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(
            f"cannot resume from {str(path)!r}: its optimizer/scheduler state does not fit this run "
            f"({err}). Resume with the same optimizer settings as the original run."
        ) from None
    extra = ckpt.get("extra") or {}
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    return History(extra.get("history", [])), int(ckpt.get("epoch") or 0), (extra.get("best") or {}).get("value"), path.parent


def _fit_config(run: _Run, config: FitConfig) -> dict[str, Any]:
    """The settings stored in every checkpoint (plain values)."""
    group = run.optimizer.param_groups[0]
    optimizer, mixing = config.optimizer, config.mixing
    return {
        "epochs": config.epochs, "batch_size": config.batch_size,
        "optimizer": optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
        "lr": group.get("initial_lr", group["lr"]), "warmup_epochs": config.warmup_epochs,
        "mixing": mixing if isinstance(mixing, str) or mixing is None else "custom", "mix_alpha": config.mix_alpha,
        "seed": config.seed, "device": str(run.device),
        "teacher": type(_unwrap(run.teacher)).__name__ if run.teacher is not None else None,
        "teacher_bf16": run.teacher_bf16 if run.teacher is not None else None,
        "loss": repr(config.loss), "world_size": run.world.size, "save_every": config.save_every,
    }


# ============================================================================ fit
def fit(
    model: nn.Module, train_data: Any, val_data: Any = None, *, epochs: int, teacher: nn.Module | None = None,
    loss: Callable[..., Tensor] | None = None, optimizer: str | torch.optim.Optimizer = "adamw",
    lr: float | None = None, weight_decay: float | None = None, batch_size: int | None = None,
    warmup_epochs: float | None = None, min_lr_ratio: float = 0.0, scheduler: str | Any = "cosine",
    mixing: str | Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = "cutmix", mix_alpha: float = 0.5,
    grad_clip: float | None = None, device: str | torch.device = "auto", output_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None, seed: int | None = None, progress: bool = True,
    live_plot: bool | LivePlot = False, callbacks: Iterable[Callable[[dict], Any]] = (), amp: bool = True,
    teacher_bf16: bool | None = None, compile: bool = False, num_workers: int = 0, eval_batch_size: int | None = None,
    run_info: dict[str, Any] | None = None, test_data: Any = None, save_every: int = 1,
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs, distilled from ``teacher`` if given; return the History.

    ``model`` is the student (e.g. :func:`titn_edu.build_model`) or any classifier. The data are Datasets of
    ``(image, label)``, DataLoaders, :class:`~titn_edu.device_data.DeviceLoader` or ``(images, labels)`` pairs;
    ``val_data`` is scored after every epoch and picks ``best.pt``, ``test_data`` is scored for the record only.
    ``teacher``, a trained classifier with the student's classes, is frozen and sees the student's mixed
    batches (a single-head student uses its one head for both terms). The other arguments are settings,
    documented in :class:`FitConfig`; the epochs' records in :class:`History`.

    Each epoch runs :func:`train_one_epoch` (Algorithm 2 on every batch), scores the data, saves the
    :class:`RunFolder` and calls the callbacks. The first Ctrl-C finishes the current step and returns the
    history so far; a non-finite loss stops the run with advice (status ``"diverged"`` and a warning).
    The model is left in ``eval()`` mode (a TITN then returns the mean of its two heads). Called by every
    process of a job (``torchrun``), it trains them together with DDP: see :mod:`titn_edu.distributed`.
    """
    _check_models(model, teacher)
    config = FitConfig(
        epochs=epochs, loss=loss, optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio, scheduler=scheduler, mixing=mixing,
        mix_alpha=mix_alpha, grad_clip=grad_clip, device=device, output_dir=output_dir, resume=resume, seed=seed,
        progress=progress, live_plot=live_plot, callbacks=callbacks, amp=amp, teacher_bf16=teacher_bf16,
        compile=compile, num_workers=num_workers, eval_batch_size=eval_batch_size, run_info=run_info,
        save_every=save_every,
    )
    run = _set_up(model, teacher, train_data, val_data, test_data, config)  # seed, device, data, optimiser
    folder, history, done = _open_run_folder(run, config)  # with resume: weights, optimiser, history, RNG
    if done >= epochs:
        return _nothing_to_do(model, history, done, epochs)
    plot = live_plot if isinstance(live_plot, LivePlot) else (LivePlot() if live_plot else None)
    stop: tuple[str, str] | None = None  # (status, message) of a run that ends early
    with _GracefulInterrupt() as interrupt, _epoch_bar(done, epochs, config.progress) as epoch_bar:
        try:
            for epoch in epoch_bar:
                # train_one_epoch (Algorithm 2 on every batch), then the validation and test scores
                record = _fit_epoch(run, config, epoch, stop=lambda: interrupt.requested)
                history.append(record)
                _show(record, history, epoch_bar if config.progress else None, plot)
                stop = _save_and_ask(record, history, run, folder, config, lambda: interrupt.requested)
                if stop is not None:  # a callback stopped the run
                    break
        except KeyboardInterrupt:
            stop = ("interrupted", _interrupted_message(history, folder))
        except NonFiniteLossError as err:
            stop = ("diverged", f"{err} The update was not applied; {folder.last_saved()}; best.pt is untouched.")
    return _finish(model, history, folder, stop, epochs)


def _fit_epoch(run: _Run, config: FitConfig, epoch: int, stop: Callable[[], bool]) -> dict[str, Any]:
    """One epoch of :func:`fit`: train on every batch, then score the validation and test data."""
    start = time.perf_counter()
    record: dict[str, Any] = {"epoch": epoch + 1, **train_one_epoch(
        run.train_model, run.train_loader, run.optimizer, run.scheduler, config.loss, teacher=run.teacher,
        mixer=run.mixer, device=run.device, amp=config.amp, teacher_bf16=run.teacher_bf16,
        grad_clip=config.grad_clip, epoch=epoch, epochs=config.epochs, progress=config.progress, stop=stop,
    )}
    record["train_seconds"] = time.perf_counter() - start  # the record's averages synchronised the device
    for split, loader, desc in (("val", run.val_loader, "validate"), ("test", run.test_loader, "test")):
        if loader is not None:
            scores = _eval_summary(run.model, loader, run.device, config.amp, config.progress, desc=desc,
                                   shared=run.world.distributed)
            record.update({f"{split}_loss": scores["loss"], f"{split}_top1": scores["top1"],
                           f"{split}_top5": scores["top5"]})
    record["seconds"] = time.perf_counter() - start
    record["finished_at"] = time.time()
    return record


def _save_and_ask(record: dict[str, Any], history: History, run: _Run, folder: RunFolder, config: FitConfig,
                  interrupted: Callable[[], bool]) -> tuple[str, str] | None:
    """After an epoch: save it (``history.json``; ``last.pt`` and ``best.pt`` when a checkpoint is due), call
    the callbacks; ``("stopped", message)`` when one of them stops the run. Raises ``KeyboardInterrupt``
    after a Ctrl-C during the evaluations or the callbacks. A run stopping here first saves its checkpoint."""
    epoch, epochs = record["epoch"], config.epochs
    folder.save(record, history, run, checkpoint=epoch % config.save_every == 0 or epoch == epochs)
    stopping = _callbacks_say_stop(config.callbacks, record) and epoch < epochs
    interrupt = distributed.any_process(interrupted())  # several processes: all stop, or none
    if stopping or interrupt:
        folder.catch_up(record, history, run)  # this epoch's checkpoint, if save_every skipped it
    if stopping:
        return "stopped", f"a callback stopped training after epoch {epoch}."
    if interrupt:
        raise KeyboardInterrupt
    return None


def _epoch_bar(done: int, epochs: int, progress: bool) -> tqdm:
    return tqdm(range(done, epochs), desc="epochs", initial=done, total=epochs, disable=not progress,
                dynamic_ncols=True)


def _show(record: dict[str, Any], history: History, epoch_bar: Any, plot: LivePlot | None) -> None:
    """The epoch's numbers on the progress bar (if any), the curves on the live plot (if any)."""
    if epoch_bar is not None:
        epoch_bar.set_postfix({k: f"{record[k]:.4g}" for k in ("train_loss", "train_top1", "val_top1")
                               if isinstance(record.get(k), float)}, refresh=False)
    if plot is not None:
        plot.update(history)


def _callbacks_say_stop(callbacks: list[Callable[[dict], Any]], record: dict[str, Any]) -> bool:
    """Call every callback with the record (all of them, even after one asked to stop).

    With several processes, one callback asking to stop on one process stops them all."""
    answers = [callback(record) for callback in callbacks]
    return distributed.any_process(True in answers)


def _nothing_to_do(model: nn.Module, history: History, done: int, epochs: int) -> History:
    history.status = "completed"
    history.message = f"nothing to do: the checkpoint already holds {done} of {epochs} epochs."
    model.eval()
    return history


def _finish(model: nn.Module, history: History, folder: RunFolder, stop: tuple[str, str] | None,
            epochs: int) -> History:
    """Record how the run ended (and say it), save ``history.json``, leave the model in ``eval()`` mode."""
    history.status, history.message = stop if stop is not None else ("completed", f"trained {epochs} epochs.")
    if history.status == "diverged" and folder.writer:  # several processes: rank 0 says it
        warnings.warn(history.message, RuntimeWarning, stacklevel=3)  # points at fit's caller
    elif stop is not None and folder.writer:
        tqdm.write(history.message)
    folder.save_history(history)
    model.eval()
    return history


def _interrupted_message(history: History, folder: RunFolder) -> str:
    done, out = (history[-1]["epoch"] if history else 0), folder.path
    where = (f"; {out / 'last.pt'} holds epoch {folder.saved_epoch} (resume with resume={str(out)!r})"
             if out is not None and folder.saved_epoch else "")
    return f"training interrupted after {done} complete epoch(s){where}."


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
