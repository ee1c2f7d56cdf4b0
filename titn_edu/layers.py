"""The MLP (eq. 4–5), layer normalisation (eq. 6) and stochastic depth used by every block."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Mlp", "DropPath", "LayerNorm"]

#: Eq. 6, :math:`\mathrm{LN}(x) = (x - \mu) / \delta \odot \gamma + \beta` over the last axis.
#: PyTorch's implementation is used as is; notebook 03 rebuilds it and checks it against this.
LayerNorm = nn.LayerNorm


class Mlp(nn.Module):
    r"""Eq. 4–5: :math:`\mathrm{MLP}(X) = \mathrm{FC}(\sigma(\mathrm{FC}(X)))` with GELU as σ.

    Args:
        dim: input and output size.
        hidden_dim: size of the hidden layer (``mlp_ratio * dim`` in the blocks).
        drop: dropout after each linear layer.
    """

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole samples with probability ``p``.

    Each kept sample is scaled by ``1 / (1 - p)`` so the expected output is unchanged. Identity in
    eval mode or when ``p == 0``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1); got {p}.")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
