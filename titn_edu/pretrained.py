"""Trained models shipped with the package: the course's teachers and TITN students.

>>> import titn_edu
>>> titn_edu.list_pretrained()
['teacher-cifar10', 'teacher-cifar10-quick', 'teacher-mnist', 'titn-cifar10', 'titn-mnist']
>>> model = titn_edu.load_pretrained("titn-cifar10")      # eval() mode, on the CPU
>>> model.pretrained_info["metrics"]["test_top1"]         # what it scored on the whole test split

Each model is one file in ``titn_edu/weights/`` and one entry in ``titn_edu/weights/manifest.json``:
the file's SHA-256 and size, what the model is (dataset, role, parameters, GFLOPs), its metrics on the
full test split and on a fixed check subset, and how it was trained (the command, the device, the
time). The files are ordinary :mod:`titn_edu.checkpoint` files holding only tensors and plain values,
read with ``weights_only=True`` (nothing loaded from them can run code), and their SHA-256 is checked
against the manifest before they are read: a changed, truncated or missing file raises an error
that names it and says how to get a good copy back.

The weights are stored in half precision (float16) to keep the package small; they are loaded back
into float32. :func:`publish` records, for each model, its test accuracy before and after that
rounding, so the manifest shows what storage in float16 costs (``metrics["test_top1_float32"]``).
``python scripts/ship_pretrained.py`` writes the files and the manifest from training runs
(the commands that trained them are in the README, "Trained models").
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, build_from_spec, load_checkpoint, model_spec, save_checkpoint
from .utils import save_json

__all__ = ["list_pretrained", "load_pretrained", "pretrained_info", "weights_dir", "PretrainedIntegrityError",
           "CHECK_SUBSET", "check_subset", "publish"]

#: The fixed subset of the test split every shipped model is checked on (``tests/test_pretrained.py``):
#: ``get_dataset(dataset, train=False, limit=CHECK_SUBSET["limit"], seed=CHECK_SUBSET["seed"])``, a
#: class-balanced draw.
CHECK_SUBSET: dict[str, int] = {"limit": 2000, "seed": 0}

_MANIFEST = "manifest.json"
_FORMAT = "titn_edu.pretrained"


class PretrainedIntegrityError(CheckpointError):
    """A shipped weights file does not match the manifest (changed, truncated or replaced)."""


def weights_dir() -> Path:
    """The folder of the shipped weights and their manifest (inside the installed package)."""
    return Path(__file__).resolve().parent / "weights"


def _manifest(folder: Path | None = None) -> dict[str, Any]:
    path = (folder or weights_dir()) / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"the manifest of the shipped models is missing: {str(path)!r}. Reinstall titn_edu "
            f"(pip install --force-reinstall titn_edu) or restore it with git checkout -- {path.name}."
        )
    data = json.loads(path.read_text())
    if data.get("format") != _FORMAT or not isinstance(data.get("models"), dict):
        raise CheckpointError(f"{str(path)!r} is not a titn_edu manifest of shipped models.")
    return data


def list_pretrained() -> list[str]:
    """Names of the shipped models, for :func:`load_pretrained`."""
    return sorted(_manifest()["models"])


def _entry(name: Any) -> dict[str, Any]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'titn-cifar10'; got {type(name).__name__}.")
    models = _manifest()["models"]
    if name not in models:
        raise ValueError(f"unknown pretrained model {name!r}; the shipped ones are {sorted(models)}.")
    return models[name]


def pretrained_info(name: str) -> dict[str, Any]:
    """The manifest entry of a shipped model (a copy): ``file``, ``sha256``, ``bytes``, ``dataset``,
    ``role`` (``"student"`` or ``"teacher"``), ``model`` (how to rebuild it), ``params``, ``gflops``,
    ``metrics`` (full test split: ``test_top1``, ``test_top5``, ``precision``, ``recall``, ``f1``,
    ``test_samples``, and ``test_top1_float32`` before the float16 rounding), ``check`` (the check
    subset and the top-1 the shipped file scored on it) and ``training`` (command, device, time)."""
    return copy.deepcopy(_entry(name))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(name: str, *, map_location: Any = "cpu") -> nn.Module:
    """A shipped model, built and loaded, in ``eval()`` mode, with its manifest entry as
    ``model.pretrained_info`` (see :func:`pretrained_info`).

    Raises ``ValueError`` for an unknown name (listing the known ones), ``FileNotFoundError`` when
    the file is missing and :class:`PretrainedIntegrityError` when its SHA-256 differs from the
    manifest; both name the file and how to restore it.
    """
    entry = _entry(name)
    path = weights_dir() / entry["file"]
    fix = (f"Reinstall titn_edu (pip install --force-reinstall titn_edu) or, in a clone of the repository, "
           f"restore it with git checkout -- titn_edu/weights/{entry['file']}.")
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name!r} are missing: {str(path)!r} does not exist. {fix}")
    digest = _sha256(path)
    if digest != entry["sha256"]:
        size = path.stat().st_size
        raise PretrainedIntegrityError(
            f"the weights of {name!r} in {str(path)!r} do not match the manifest (SHA-256 {digest[:12]}… "
            f"instead of {entry['sha256'][:12]}…, {size:,} bytes instead of {entry['bytes']:,}): the file was "
            f"changed or truncated. {fix}"
        )
    ckpt = load_checkpoint(path, map_location="cpu")
    model = build_from_spec(ckpt["model"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    model.pretrained_info = copy.deepcopy(entry)
    model.pretrained_info["name"] = name
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


# ----------------------------------------------------------------------------- checking and publishing
def check_subset(dataset: str, *, root: str | os.PathLike | None = None):
    """The fixed, class-balanced check subset of ``dataset``'s test split (:data:`CHECK_SUBSET`)."""
    from .data import get_dataset, get_transforms

    return get_dataset(dataset, train=False, root=root, transform=get_transforms(dataset, train=False),
                       **CHECK_SUBSET)


def publish(
    name: str,
    checkpoint: str | os.PathLike,
    *,
    dataset: str,
    role: str,
    training: dict[str, Any],
    folder: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write a trained checkpoint as the shipped model ``name``: float16 weights in ``folder``
    (default :func:`weights_dir`), evaluated on the full test split (before and after the float16
    rounding) and on the check subset, and its entry in the manifest. Returns the entry.

    ``training`` (plain values) says how it was trained: the command, the device, the time.
    """
    from .train import evaluate

    if role not in ("student", "teacher"):
        raise ValueError(f"role must be 'student' or 'teacher'; got {role!r}.")
    folder = Path(folder) if folder is not None else weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    source = load_checkpoint(checkpoint)
    model = build_from_spec(source["model"])
    model.load_state_dict(source["state_dict"])
    model.eval()
    from .data import get_dataset, get_transforms

    test = get_dataset(dataset, train=False, root=root, transform=get_transforms(dataset, train=False))
    before = evaluate(model, test, device="cpu")
    model.half().float()  # the float16 rounding of the stored weights
    after = evaluate(model, test, device="cpu")
    check = evaluate(model, check_subset(dataset, root=root), device="cpu")

    file = f"{name}.pt"
    path = save_checkpoint(folder / file, model.half(), epoch=source.get("epoch"),
                           run_info={"dataset": dataset, "role": role})  # what `titn-edu evaluate` reads
    entry = {
        "file": file, "sha256": _sha256(path), "bytes": path.stat().st_size, "dtype": "float16",
        "dataset": dataset, "role": role, "model": model_spec(model),
        "params": before["params"], "gflops": before["gflops"],
        "metrics": {"test_top1": after["top1"], "test_top5": after["top5"], "precision": after["precision"],
                    "recall": after["recall"], "f1": after["f1"], "test_samples": after["num_samples"],
                    "test_top1_float32": before["top1"]},
        "check": dict(CHECK_SUBSET, top1=check["top1"], top5=check["top5"], samples=check["num_samples"]),
        "training": training,
    }
    manifest_path = folder / _MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"format": _FORMAT, "models": {}}
    manifest["models"][name] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    save_json(manifest_path, manifest)
    return entry
