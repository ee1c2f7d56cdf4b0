"""The MLP (eq. 4–5), layer normalisation (eq. 6) and stochastic depth used by every block."""

from __future__ import annotations

from torch import Tensor, nn

from .linear import Linear, linear_gelu

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

    Attributes:
        fused: compute ``GELU(FC(X))`` as one step where a fast path applies (default):
            :func:`titn_edu.linear.linear_gelu`, which on CPU in float32 adds the bias and applies
            the GELU in one pass after the product (:func:`titn_edu.native.bias_gelu`, training and
            inference) or, in inference where timed faster, inside oneDNN's product. ``False``
            runs ``fc1`` then ``act`` as two modules.
    """

    fused: bool = True

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self._fuse_gelu():  # the GELU fused with the product (linear_gelu) where the fast path applies
            hidden = linear_gelu(x, self.fc1.weight, self.fc1.bias, kernel=self.fc1.kernel)
        else:
            hidden = self.act(self.fc1(x))
        return self.drop(self.fc2(self.drop(hidden)))

    def _fuse_gelu(self) -> bool:
        """The library's own exact GELU and fast ``fc1``, and no hooks that expect them to run one by one."""
        fc1, act = self.fc1, self.act
        return (
            self.fused
            and type(act) is nn.GELU
            and act.approximate == "none"
            and type(fc1) is Linear
            and fc1.fused
            and not (fc1._forward_hooks or fc1._forward_pre_hooks or act._forward_hooks or act._forward_pre_hooks)
        )


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole samples with probability ``p``.

    Identity in eval mode or when ``p == 0``.
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
