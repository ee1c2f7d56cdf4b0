"""Results of training runs, next to the paper's tables.

A run of ``titn-edu train --output DIR`` writes ``DIR/metrics.json``. A run worth keeping is recorded in
the repository as ``results/<name>.json``: the metrics file plus what is needed to read it (dataset,
model, role, device, command). :func:`load_results` reads them; :func:`reproduction_table` renders them
beside the paper's numbers (used by ``scripts/reproduction_table.py`` for the README and by notebook 10).
Nothing here is typed in by hand except the paper's own figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PAPER", "REQUIRED_KEYS", "load_results", "reproduction_table", "record_result"]

#: The paper's reported top-1 / top-5 accuracy (%) — Table 3 (CIFAR-100), Table 4 (CIFAR-10), Table 5 (MNIST).
PAPER: dict[str, dict[str, tuple[float, float]]] = {
    "cifar100": {
        "vgg16_bn": (79.80, 94.51), "vit": (70.79, 89.55), "deit": (73.91, 91.91), "tnt": (68.47, 88.44),
        "titn": (74.71, 92.28), "titn-mixup": (74.40, 92.53), "titn-large-patch": (63.63, 85.93),
    },
    "cifar10": {
        "vgg16_bn": (95.98, 99.92), "vit": (86.33, 99.41), "deit": (91.64, 99.73), "tnt": (86.91, 99.38),
        "titn": (92.03, 99.80), "titn-large-patch": (85.39, 99.31),
    },
    "mnist": {
        "vgg16_bn": (99.75, 100.0), "vit": (99.40, 100.0), "deit": (99.52, 100.0), "tnt": (99.46, 100.0),
        "titn": (99.56, 100.0),
    },
}

#: Keys every ``results/*.json`` file must hold.
REQUIRED_KEYS = ("dataset", "model", "role", "test_top1", "test_top5", "wall_seconds", "device", "command")


def record_result(metrics_path: str | Path, out_path: str | Path, **fields: Any) -> Path:
    """Copy a run's ``metrics.json`` to ``out_path`` with extra ``fields`` (e.g. ``device=``, ``command=``).

    The file is written atomically; the required keys (:data:`REQUIRED_KEYS`) are checked first.
    """
    metrics_path, out_path = Path(metrics_path), Path(out_path)
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics file at {metrics_path}; pass the metrics.json a training run wrote.")
    record = {**json.loads(metrics_path.read_text()), **fields}
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{metrics_path}: missing {missing}; pass them as keyword arguments (e.g. device='H100').")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(out_path)
    return out_path


def load_results(folder: str | Path = "results") -> list[dict[str, Any]]:
    """Every ``*.json`` run record in ``folder`` (sorted by name), each with its file name under ``"file"``.

    A folder that does not exist gives an empty list; a record without the required keys is an error.
    """
    folder = Path(folder)
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); fix or remove it.") from None
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path} lacks {missing}; results files need {list(REQUIRED_KEYS)}.")
        records.append({**record, "file": path.name})
    return records


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def reproduction_table(records: list[dict[str, Any]]) -> str:
    """A Markdown table: each run's top-1 / top-5 beside the paper's, with device, wall time and command."""
    if not records:
        return "_No results recorded yet: `results/` holds no run records._\n"
    lines = [
        "| dataset | role | model | top-1 (%) | paper top-1 | top-5 (%) | paper top-5 | time to paper's top-1 | device | wall time | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        paper = PAPER.get(r["dataset"], {}).get(r.get("paper_model", r["model"]), (None, None))
        reach = r.get("seconds_to_paper_top1")
        lines.append(
            f"| {r['dataset']} | {r['role']} | `{r['model']}` | {_fmt(r['test_top1'])} | {_fmt(paper[0])} | "
            f"{_fmt(r['test_top5'])} | {_fmt(paper[1])} | {'–' if reach is None else f'{reach / 60:.1f} min'} | "
            f"{r['device']} | {r['wall_seconds'] / 60:.1f} min | `{r['command']}` |"
        )
    return "\n".join(lines) + "\n"
