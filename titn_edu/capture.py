"""Record the softmax attention weights of every attention layer of a model.

>>> with capture_attention(model) as maps:
...     model(images)
>>> maps.outer[0].shape   # layer 0, outer stream: (B, heads, T, T)
>>> maps.inner[0].shape   # layer 0, inner stream: (B·N, heads, P, P)

While capturing, each :class:`~titn_edu.attention.MultiHeadAttention` takes the explicit eq. 1
path (the fused kernel never materialises the weights); on exit everything is restored. The model's
outputs are the same inside and outside the context.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from torch import Tensor, nn

from .attention import MultiHeadAttention

__all__ = ["AttentionRecord", "AttentionMaps", "capture_attention"]

_LAYER = re.compile(r"blocks\.(\d+)\.(inner|outer)\b")


@dataclass
class AttentionRecord:
    """One captured map: module ``name``, ``layer`` index (or ``None``), ``stream`` (``"inner"``/``"outer"``/``"other"``)."""

    name: str
    layer: int | None
    stream: str
    weights: Tensor


@dataclass
class AttentionMaps:
    """What :func:`capture_attention` yields; filled during the forward passes run inside it."""

    records: list[AttentionRecord] = field(default_factory=list)

    def _stream(self, stream: str) -> list[Tensor]:
        return [r.weights for r in self.records if r.stream == stream]

    @property
    def outer(self) -> list[Tensor]:
        """Outer maps ``(B, heads, T, T)`` in the order they were computed (layer 0 first)."""
        return self._stream("outer")

    @property
    def inner(self) -> list[Tensor]:
        """Inner maps ``(B·N, heads, P, P)`` in the order they were computed (layer 0 first)."""
        return self._stream("inner")

    def by_name(self) -> dict[str, list[Tensor]]:
        """All maps grouped by the attention module's name (one entry per forward pass)."""
        out: dict[str, list[Tensor]] = {}
        for r in self.records:
            out.setdefault(r.name, []).append(r.weights)
        return out

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)


@contextmanager
def capture_attention(model: nn.Module, *, detach: bool = True) -> Iterator[AttentionMaps]:
    """Context manager recording every attention layer's weights (see the module docstring).

    Args:
        model: any module containing :class:`~titn_edu.attention.MultiHeadAttention` layers.
        detach: store detached weights (default); ``False`` keeps them in the autograd graph.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture_attention expects a torch.nn.Module; got {type(model).__name__}.")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(
            "capture_attention found no titn_edu.attention.MultiHeadAttention layer in this model; "
            "it records only those layers."
        )
    maps = AttentionMaps()
    saved = [(m, m.recorder) for _, m in layers]

    def recorder(name: str):
        match = _LAYER.search(name)
        layer, stream = (int(match.group(1)), match.group(2)) if match else (None, "other")

        def record(weights: Tensor) -> None:
            maps.records.append(AttentionRecord(name, layer, stream, weights.detach() if detach else weights))

        return record

    try:
        for name, module in layers:
            module.recorder = recorder(name)
        yield maps
    finally:
        for module, previous in saved:
            module.recorder = previous
