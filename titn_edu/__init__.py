"""titn_edu — learn, build and train a Transformer-in-Transformer Network with knowledge distillation (TITN).

The public API is listed in ``__all__`` and in the README; coursework imports it, so it is stable.
"""

from __future__ import annotations

from . import attention
from .attention import MultiHeadAttention, scaled_dot_product_attention
from .blocks import TITNBlock, TransformerBlock
from .capture import AttentionMaps, capture_attention
from .embeddings import PatchEmbed, PixelEmbed, PixelToPatch, patchify, pixelify
from .layers import DropPath, Mlp
from .model import MODEL_PRESETS, TITN, build_model, count_parameters, list_models, set_fast_path
from . import data, teachers
from .data import DATASETS, ImageArrayDataset, batch_mixer, export_dataset, get_dataset, get_transforms, make_loader
from . import device_data
from .device_data import BatchAugment, DeviceLoader
from .teachers import build_teacher, freeze, list_teachers, teacher_logits
from . import losses, metrics, train
from . import distributed
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .losses import TITNLoss, cutmix_cross_entropy
from .train import evaluate, fit
from .utils import seed_everything
from . import results
from . import pretrained
from .pretrained import list_pretrained, load_pretrained, pretrained_info
from . import presets, viz

__version__ = "0.1.0"

__all__ = [
    "results",
    "pretrained",
    "list_pretrained",
    "load_pretrained",
    "pretrained_info",
    "attention",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "Mlp",
    "DropPath",
    "TransformerBlock",
    "TITNBlock",
    "PatchEmbed",
    "PixelEmbed",
    "PixelToPatch",
    "patchify",
    "pixelify",
    "TITN",
    "build_model",
    "list_models",
    "MODEL_PRESETS",
    "count_parameters",
    "set_fast_path",
    "capture_attention",
    "AttentionMaps",
    "data",
    "DATASETS",
    "ImageArrayDataset",
    "get_dataset",
    "get_transforms",
    "batch_mixer",
    "export_dataset",
    "make_loader",
    "device_data",
    "BatchAugment",
    "DeviceLoader",
    "teachers",
    "build_teacher",
    "list_teachers",
    "freeze",
    "teacher_logits",
    "__version__",
    "losses",
    "metrics",
    "train",
    "distributed",
    "TITNLoss",
    "cutmix_cross_entropy",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "seed_everything",
    "fit",
    "evaluate",
    "viz",
    "checks",
    "grading",
    "presets",
    "bench",
    "accel",
]
from . import course  # noqa: E402  (course part II: preset-driven training helpers for notebooks 06-10)

__all__ += ["course"]

#: Imported on first use only: the coursework checkers and grading (otter-grader), the benchmark (it
#: needs timm), the command line, and the optional CPU accelerator (importing it builds nothing;
#: accel.accelerate(model) does).
_LAZY = ("checks", "grading", "bench", "cli", "accel")


def __getattr__(name: str):
    """Import a lazy submodule on first access (PEP 562); it is then an ordinary attribute."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
