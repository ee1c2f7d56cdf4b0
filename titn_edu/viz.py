"""Pictures for the course: images, patches, pixels, attention and position embeddings.

Every function draws one matplotlib figure and returns it, so a notebook cell can end with
``plt.show()`` and a test can inspect the axes. Images may be given as torch tensors or numpy
arrays, channels-first ``(C, H, W)`` or channels-last ``(H, W, C)`` (or ``(H, W)`` for grey), as
``uint8`` in ``[0, 255]``, floats in ``[0, 1]``, or normalised floats. Normalised images are shown
either exactly (pass the ``mean`` and ``std`` used to normalise them) or min-max rescaled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "to_display",
    "image_grid",
    "patch_grid",
    "pixel_grid",
    "attention_heatmap",
    "attention_on_image",
    "position_similarity",
]



def _pyplot():
    """pyplot, imported on first use so that ``import titn_edu`` stays light for training scripts."""
    import matplotlib.pyplot as plt

    return plt


_SHAPE_HELP = "an image of shape (C, H, W), (H, W, C) or (H, W) with C = 1 or 3 channels"


# ---------------------------------------------------------------------------- images
def _as_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)  # PIL images and nested lists
    except Exception as err:  # pragma: no cover - exotic inputs
        raise TypeError(f"{what} must be a torch.Tensor or numpy array; got {type(x).__name__}.") from err


def _channels_last(a: np.ndarray, what: str) -> np.ndarray:
    """``(C, H, W)`` / ``(H, W, C)`` / ``(H, W)`` -> ``(H, W, C)``."""
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim == 3:
        if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            return np.moveaxis(a, 0, -1)
        if a.shape[-1] in (1, 3):
            return a
        if a.shape[0] in (1, 3):
            return np.moveaxis(a, 0, -1)
    raise ValueError(f"{what} must be {_SHAPE_HELP}; got shape {tuple(a.shape)}.")


def _scale(a: np.ndarray, mean, std) -> np.ndarray:
    """Channels-last array(s) -> floats in [0, 1] (uint8 / 255, un-normalise, or min-max)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == bool:
        return a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"images must hold numbers; got dtype {a.dtype}.")
    a = a.astype(np.float32)
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (the ones used to normalise the images), or neither.")
    if mean is not None:
        channels = a.shape[-1]
        mean_a = np.asarray(mean, dtype=np.float32).reshape(-1)
        std_a = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean_a.size not in (1, channels) or std_a.size not in (1, channels):
            raise ValueError(
                f"mean and std need 1 or {channels} values (one per channel); got {mean_a.size} and {std_a.size}."
            )
        return np.clip(a * std_a + mean_a, 0.0, 1.0)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo >= 0.0 and hi <= 1.0:
        return a
    if hi - lo < 1e-12:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def to_display(image, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """One image -> a float array in ``[0, 1]`` that ``plt.imshow`` shows as intended.

    Returns ``(H, W, 3)`` for colour and ``(H, W)`` for grey images. ``uint8`` is divided by 255;
    floats already in ``[0, 1]`` are kept; other floats are un-normalised with ``mean``/``std``
    when given, else min-max rescaled.
    """
    a = _channels_last(_as_numpy(image, "image"), "image")
    a = _scale(a, mean, std)
    return a[:, :, 0] if a.shape[-1] == 1 else a


def _to_batch(images, mean, std) -> list[np.ndarray]:
    """A batch ``(B, C, H, W)`` / ``(B, H, W, C)`` or a list of images -> list of display arrays."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images to show: got an empty list.")
        arrays = [_channels_last(_as_numpy(im, f"image {i}"), f"image {i}") for i, im in enumerate(images)]
        shapes = {a.shape for a in arrays}
        if len(shapes) == 1:
            stacked = _scale(np.stack(arrays), mean, std)
            return [a[:, :, 0] if a.shape[-1] == 1 else a for a in stacked]
        return [to_display(a, mean=mean, std=std) for a in arrays]
    a = _as_numpy(images, "images")
    if a.ndim != 4:
        hint = ""
        if a.ndim == 3:
            hint = (
                " For one image use images[None]; for a batch of grey images (B, H, W) use images[:, None]."
            )
        raise ValueError(
            f"expected a batch of images (B, C, H, W) or (B, H, W, C), or a list of images; got shape "
            f"{tuple(a.shape)}.{hint}"
        )
    if len(a) == 0:
        raise ValueError("no images to show: the batch is empty.")
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 1, -1)
    elif a.shape[-1] not in (1, 3):
        raise ValueError(f"each image must have 1 or 3 channels; got a batch of shape {tuple(a.shape)}.")
    a = _scale(a, mean, std)
    return [im[:, :, 0] if im.shape[-1] == 1 else im for im in a]


def _imshow(ax, img: np.ndarray) -> None:
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")


def image_grid(
    images,
    labels=None,
    *,
    class_names: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    cell_size: float = 1.3,
) -> Figure:
    """Show a batch of images in a grid, each titled with its class name (or label, or ``titles``).

    Args:
        images: ``(B, C, H, W)`` or ``(B, H, W, C)`` tensor/array, or a list of images.
        labels: ``B`` integer labels; shown through ``class_names`` when given.
        titles: ``B`` strings, shown instead of the labels' names.
        ncols: images per row.
        mean, std: the normalisation to undo (else min-max over the whole batch).
    """
    plt = _pyplot()
    shown = _to_batch(images, mean, std)
    n = len(shown)
    if labels is not None:
        labels = [int(v) for v in _as_numpy(labels, "labels").reshape(-1)]
        if len(labels) != n:
            raise ValueError(f"got {n} images but {len(labels)} labels; pass one label per image.")
        if class_names is not None:
            bad = [v for v in labels if not 0 <= v < len(class_names)]
            if bad:
                raise ValueError(f"label {bad[0]} has no name: class_names has {len(class_names)} entries.")
        if titles is None:
            titles = [str(class_names[v]) if class_names is not None else str(v) for v in labels]
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {n} images but {len(titles)} titles; pass one title per image.")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer; got {ncols!r}.")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    extra = 0.25 if titles is not None else 0.0
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell_size * ncols, (cell_size + extra) * nrows + (0.4 if title else 0.0)),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            _imshow(ax, shown[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ patches and pixels
def _check_split(size: int, part: int, what: str, part_name: str) -> None:
    if isinstance(part, bool) or not isinstance(part, int) or part < 1 or size % part:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        raise ValueError(f"{part_name}={part!r} does not divide the {what} {size}; choose one of {divisors}.")


def patch_grid(
    image,
    patch_size: int,
    *,
    numbers: bool = True,
    highlight: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    ax=None,
) -> Figure:
    """Draw the ``p × p`` patch grid over an image, numbering the patches in row-major order.

    ``highlight`` outlines one patch (by index). With ``ax`` the drawing goes into that axes.
    """
    plt = _pyplot()
    img = to_display(image, mean=mean, std=std)
    h, w = img.shape[:2]
    _check_split(h, patch_size, "image height", "patch_size")
    _check_split(w, patch_size, "image width", "patch_size")
    rows, cols = h // patch_size, w // patch_size
    if highlight is not None and not 0 <= highlight < rows * cols:
        raise ValueError(f"highlight={highlight} is not a patch index: the image has {rows * cols} patches (0..{rows * cols - 1}).")
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.2, 3.2))
    else:
        fig = ax.figure
    _imshow(ax, img)
    for k in range(1, rows):
        ax.axhline(k * patch_size - 0.5, color="white", lw=1.2)
    for k in range(1, cols):
        ax.axvline(k * patch_size - 0.5, color="white", lw=1.2)
    if numbers:
        size = max(5, min(10, 60 / max(rows, cols)))
        for r in range(rows):
            for c in range(cols):
                ax.text(c * patch_size - 0.3, r * patch_size - 0.3, str(r * cols + c), color="yellow",
                        fontsize=size, ha="left", va="top", fontweight="bold")
    if highlight is not None:
        r, c = divmod(highlight, cols)
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((c * patch_size - 0.5, r * patch_size - 0.5), patch_size, patch_size,
                               fill=False, edgecolor="red", lw=2.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{rows * cols} patches of {patch_size}×{patch_size}", fontsize=9)
    return fig


def pixel_grid(
    image,
    patch_size: int,
    pixel_size: int,
    *,
    patch_index: int = 0,
    numbers: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """Two panels: the image with patch ``patch_index`` outlined, and that patch enlarged with its
    ``m × m`` pixel grid, pixels numbered in the row-major order the inner transformer sees."""
    plt = _pyplot()
    img = to_display(image, mean=mean, std=std)
    h, w = img.shape[:2]
    _check_split(h, patch_size, "image height", "patch_size")
    _check_split(w, patch_size, "image width", "patch_size")
    _check_split(patch_size, pixel_size, "patch_size", "pixel_size")
    cols = w // patch_size
    n = (h // patch_size) * cols
    if isinstance(patch_index, bool) or not isinstance(patch_index, int) or not 0 <= patch_index < n:
        raise ValueError(f"patch_index={patch_index!r} is not a patch index: the image has {n} patches (0..{n - 1}).")
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.2))
    patch_grid(img, patch_size, numbers=False, highlight=patch_index, ax=left,
               title=f"patch {patch_index} of {n}")
    r, c = divmod(patch_index, cols)
    patch = img[r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size]
    _imshow(right, patch)
    k = patch_size // pixel_size
    for j in range(1, k):
        right.axhline(j * pixel_size - 0.5, color="white", lw=1.2)
        right.axvline(j * pixel_size - 0.5, color="white", lw=1.2)
    if numbers:
        size = max(5, min(10, 48 / k))
        for i in range(k):
            for j in range(k):
                right.text(j * pixel_size - 0.3, i * pixel_size - 0.3, str(i * k + j), color="yellow",
                           fontsize=size, ha="left", va="top", fontweight="bold")
    right.set_xticks([])
    right.set_yticks([])
    right.set_title(f"{k * k} pixels of {pixel_size}×{pixel_size}", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- attention
def attention_heatmap(
    weights,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    head_titles: Sequence[str] | None = None,
    annotate: bool = False,
    cmap: str = "viridis",
    vmax: float | None = None,
) -> Figure:
    """Attention weights as heatmaps: rows are queries, columns keys.

    Args:
        weights: ``(L, S)`` for one map or ``(heads, L, S)`` for one panel per head (select a batch
            element first, e.g. ``maps.outer[0][0]``).
        labels: token names for both axes (needs ``L == S``), or ``None``.
        annotate: write each weight in its cell (for small maps).
        vmax: top of the colour scale (default: the largest weight).
    """
    plt = _pyplot()
    a = _as_numpy(weights, "weights").astype(np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        hint = " Select one batch element first, e.g. weights[0]." if a.ndim == 4 else ""
        raise ValueError(f"attention weights must be (L, S) or (heads, L, S); got shape {tuple(a.shape)}.{hint}")
    heads, q_len, k_len = a.shape
    if labels is not None and (len(labels) != q_len or len(labels) != k_len):
        raise ValueError(f"got {len(labels)} labels for a {q_len}×{k_len} map; pass one label per token (a square map).")
    if head_titles is not None and len(head_titles) != heads:
        raise ValueError(f"got {len(head_titles)} head_titles for {heads} maps.")
    side = min(4.0, 1.2 + 0.25 * max(q_len, k_len))
    fig, axes = plt.subplots(1, heads, figsize=(side * heads + 0.8, side + 0.4), squeeze=False,
                             layout="constrained")  # room for the titles above small maps
    top = float(a.max()) if vmax is None else vmax
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(a[i], cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
        if labels is not None:
            ax.set_xticks(range(k_len), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(q_len), labels, fontsize=7)
        ax.set_xlabel("key")
        if i == 0:
            ax.set_ylabel("query")
        if head_titles is not None:
            ax.set_title(head_titles[i], fontsize=9)
        elif heads > 1:
            ax.set_title(f"head {i}", fontsize=9)
        if annotate:
            for r in range(q_len):
                for c in range(k_len):
                    ax.text(c, r, f"{a[i, r, c]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if a[i, r, c] < 0.6 * top else "black")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


def attention_on_image(
    image,
    attention,
    *,
    alpha: float = 0.6,
    cmap: str = "inferno",
    smooth: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """Blend a per-patch attention vector over the image: the image, the map, and the two overlaid.

    Args:
        image: the image the patches were cut from.
        attention: ``(num_patches,)`` weights over the patches (row-major; drop the class and
            distillation tokens first) or a ``(rows, cols)`` grid.
        smooth: bilinear upsampling instead of one flat block per patch.
        vmin, vmax: the colour scale of the map and the overlay. By default it runs from the smallest
            to the largest weight, which makes tiny differences look like strong contrast; pass a fixed
            scale (e.g. ``vmin=0, vmax=1``) to compare maps with each other.
    """
    plt = _pyplot()
    img = to_display(image, mean=mean, std=std)
    h, w = img.shape[:2]
    att = _patch_grid_of(attention, h, w)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}.")
    lo = float(att.min()) if vmin is None else float(vmin)
    hi = float(att.max()) if vmax is None else float(vmax)
    if (vmin is not None or vmax is not None) and not hi > lo:
        raise ValueError(f"the colour scale needs vmin < vmax; got vmin={lo}, vmax={hi}.")
    up = _upsample(att, h, w, smooth)
    span = hi - lo
    norm = np.clip((up - lo) / span, 0.0, 1.0) if span > 1e-12 else np.zeros_like(up)
    heat = plt.get_cmap(cmap)(norm)[..., :3]
    base = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.0))
    _imshow(axes[0], img)
    axes[0].set_title("image", fontsize=9)
    im = axes[1].imshow(att, cmap=cmap, interpolation="nearest", vmin=lo, vmax=hi)
    axes[1].set_title("attention per patch", fontsize=9)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[2].imshow((1 - alpha) * base + alpha * heat)
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


def _patch_grid_of(attention, h: int, w: int) -> np.ndarray:
    """``attention`` as a ``(rows, cols)`` float32 grid that tiles an ``h × w`` image into whole patches."""
    att = _as_numpy(attention, "attention").astype(np.float32)
    if att.ndim == 1:
        side = math.isqrt(att.size)
        if side * side != att.size:
            raise ValueError(
                f"attention over {att.size} tokens is not a square patch grid. If it still holds the class "
                f"(first) and distillation (last) tokens, drop them, e.g. attention[1:-1]."
            )
        att = att.reshape(side, side)
    if att.ndim != 2:
        raise ValueError(f"attention must be (num_patches,) or (rows, cols); got shape {tuple(att.shape)}.")
    rows, cols = att.shape
    if h % rows or w % cols:
        raise ValueError(f"a {rows}×{cols} attention grid does not tile a {h}×{w} image into whole patches.")
    return att


def _upsample(att: np.ndarray, h: int, w: int, smooth: bool) -> np.ndarray:
    """A ``(rows, cols)`` grid at image size ``h × w``: one flat block per patch, or bilinear with ``smooth``."""
    if smooth:
        return torch.nn.functional.interpolate(torch.from_numpy(att)[None, None], size=(h, w), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    rows, cols = att.shape
    return np.kron(att, np.ones((h // rows, w // cols), dtype=np.float32))


def position_similarity(pos_embed, *, num_prefix: int = 0, num_suffix: int = 0, title: str | None = None) -> Figure:
    """Cosine similarity of each patch's position embedding to every other, as a grid of small maps.

    Map ``(r, c)`` shows how similar the position embedding of the patch in row ``r``, column ``c``
    is to all others; learned embeddings of a trained model light up near their own position.

    Args:
        pos_embed: ``(N, D)`` or ``(1, N, D)`` position embeddings of a square patch grid.
        num_prefix, num_suffix: tokens to drop from the front (class) and back (distillation).
    """
    plt = _pyplot()
    a = _as_numpy(pos_embed, "pos_embed").astype(np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"pos_embed must be (N, D) or (1, N, D); got shape {tuple(a.shape)}.")
    if num_prefix < 0 or num_suffix < 0 or num_prefix + num_suffix >= a.shape[0]:
        raise ValueError(f"cannot drop {num_prefix} + {num_suffix} tokens from {a.shape[0]} position embeddings.")
    a = a[num_prefix:a.shape[0] - num_suffix]
    n = a.shape[0]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"{n} position embeddings do not form a square patch grid; drop the class/distillation tokens "
            f"with num_prefix=1 and num_suffix=1."
        )
    unit = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    sim = (unit @ unit.T).reshape(side, side, side, side)
    fig, axes = plt.subplots(side, side, figsize=(min(0.8 * side, 8.0) + 0.8, min(0.8 * side, 8.0)), squeeze=False)
    for r in range(side):
        for c in range(side):
            im = axes[r, c].imshow(sim[r, c], cmap="viridis", vmin=-1.0, vmax=1.0, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for r in range(side):
        axes[r, 0].set_ylabel(str(r), fontsize=7, rotation=0, labelpad=6)
    for c in range(side):
        axes[-1, c].set_xlabel(str(c), fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
    fig.suptitle(title if title is not None else "position-embedding similarity (row, column of the patch)", fontsize=10)
    return fig


# ------------------------------------------------------------------- part II: trained models
__all__ += ["attention_rollout", "confusion_matrix", "mistakes_gallery", "training_curves"]


def attention_rollout(outer_maps, *, token: int = 0, num_prefix: int = 1, num_suffix: int = 1,
                      head_fusion: str = "mean") -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema, 2020): how much each patch feeds one token after all layers.

    Per layer: fuse the heads (``"mean"``, ``"max"`` or ``"min"``), add the identity for the residual
    connection, renormalise the rows, :math:`\hat A_l = (A_l + I) / \mathrm{rowsum}`; then multiply
    through the layers, :math:`R = \hat A_L \cdots \hat A_1`, read row ``token`` of ``R`` and drop the
    ``num_prefix`` leading (class) and ``num_suffix`` trailing (distillation) tokens.

    Args:
        outer_maps: the outer maps of a forward pass, a list of ``(B, heads, T, T)`` tensors
            (``capture_attention(model).outer``), first layer first.
        token: the query token to explain: ``0`` = class token, ``-1`` = distillation token (TITN's order).

    Returns:
        ``(B, N)`` weights over the ``N = T - num_prefix - num_suffix`` patches (not renormalised).
    """
    if isinstance(outer_maps, torch.Tensor):
        outer_maps = [outer_maps]
    if not isinstance(outer_maps, (list, tuple)) or not outer_maps:
        raise ValueError("outer_maps must be a non-empty list of (B, heads, T, T) attention maps, e.g. maps.outer.")
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}; got {head_fusion!r}.")
    first = outer_maps[0]
    for i, a in enumerate(outer_maps):
        if not isinstance(a, torch.Tensor) or a.dim() != 4 or a.shape[-1] != a.shape[-2] or a.shape != first.shape:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"map {i} must be (B, heads, T, T) like map 0 {tuple(first.shape)}; got {got}. "
                             f"Pass the outer maps (maps.outer), not the inner ones.")
    t = first.shape[-1]
    if num_prefix < 0 or num_suffix < 0 or num_prefix + num_suffix >= t:
        raise ValueError(f"cannot drop {num_prefix} + {num_suffix} tokens from {t}.")
    if not -t <= token < t:
        raise ValueError(f"token={token} is not a token index of a {t}-token sequence.")
    eye = torch.eye(t, dtype=torch.float64, device=first.device)
    rollout = eye.expand(first.shape[0], t, t)
    for a in outer_maps:
        a = fuse[head_fusion](a.detach().double()) + eye
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    return rollout[:, token, num_prefix:t - num_suffix].float()


def confusion_matrix(cm, class_names: Sequence[str] | None = None, *, normalize: bool = False,
                     title: str | None = None, annotate: bool | None = None) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted class) as a heatmap with counts.

    ``normalize=True`` shows each row as fractions of that class (the diagonal is the per-class recall).
    """
    plt = _pyplot()
    a = _as_numpy(cm, "cm").astype(np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C); got shape {tuple(a.shape)}.")
    c = a.shape[0]
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"got {len(class_names)} class names for a {c}×{c} confusion matrix.")
    shown = a / np.maximum(a.sum(1, keepdims=True), 1) if normalize else a
    side = min(9.0, 2.0 + 0.45 * c)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(shown, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the class" if normalize else "images")
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(c)]
    if c <= 30:
        ax.set_xticks(range(c), names, rotation=90 if max(map(len, names)) > 3 else 0, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
    if annotate if annotate is not None else c <= 12:
        top = shown.max() if shown.size else 1.0
        for r in range(c):
            for k in range(c):
                if a[r, k]:
                    text = f"{shown[r, k]:.2f}" if normalize else f"{int(a[r, k])}"
                    ax.text(k, r, text, ha="center", va="center", fontsize=7,
                            color="white" if shown[r, k] > 0.5 * top else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = a.sum()
    acc = np.trace(a) / total if total else 0.0
    ax.set_title(title if title is not None else f"confusion matrix ({int(total)} images, {100 * acc:.1f} % correct)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def mistakes_gallery(images, labels, preds, *, class_names: Sequence[str] | None = None, max_images: int = 16,
                     ncols: int = 8, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     title: str | None = None) -> Figure:
    """The first ``max_images`` misclassified images, each titled ``true → predicted``.

    ``images`` ``(B, C, H, W)``, ``labels`` and ``preds`` ``(B,)`` class indices (or ``preds`` as logits
    ``(B, classes)``). With no mistake at all the figure says so.
    """
    plt = _pyplot()
    labels_a = _as_numpy(labels, "labels").reshape(-1).astype(np.int64)
    preds_a = _as_numpy(preds, "preds")
    if preds_a.ndim == 2:
        preds_a = preds_a.argmax(-1)
    preds_a = preds_a.reshape(-1).astype(np.int64)
    n = len(_as_numpy(images, "images")) if not isinstance(images, (list, tuple)) else len(images)
    if not len(labels_a) == len(preds_a) == n:
        raise ValueError(f"got {n} images, {len(labels_a)} labels and {len(preds_a)} predictions; pass one of each per image.")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be a positive integer; got {max_images!r}.")
    wrong = np.flatnonzero(labels_a != preds_a)[:max_images]
    head = title if title is not None else f"{int((labels_a != preds_a).sum())} mistakes in {n} images (true → predicted)"
    if len(wrong) == 0:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no mistakes in {n} images", ha="center", va="center")
        return fig
    name = (lambda v: str(class_names[v])) if class_names is not None else str
    titles = [f"{name(labels_a[i])} → {name(preds_a[i])}" for i in wrong]
    batch = [images[i] for i in wrong]
    return image_grid(batch, titles=titles, ncols=ncols, mean=mean, std=std, title=head)


def training_curves(history, *, title: str | None = None) -> Figure:
    """Three panels from a ``fit`` history: the two heads' losses, accuracies, agreement with the teacher.

    Keys drawn where present: ``train_loss``, ``train_class_loss``, ``train_distill_loss``, ``val_loss``;
    ``train_top1``, ``val_top1``; ``teacher_agreement``.
    """
    plt = _pyplot()
    records = list(history)
    if not records:
        raise ValueError("the history is empty: train for at least one epoch first.")
    panels = [("loss", ("train_loss", "train_class_loss", "train_distill_loss", "val_loss")),
              ("top-1 accuracy (%)", ("train_top1", "val_top1")),
              ("distillation head = teacher (%)", ("teacher_agreement",))]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.1))
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            points = [(e, r.get(key)) for e, r in zip(epochs, records) if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
