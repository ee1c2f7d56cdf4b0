"""titn_edu.viz draws headless (Agg), returns figures, and rejects bad shapes with clear ValueErrors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from titn_edu import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_to_display_layouts_and_ranges():
    rgb_u8 = torch.randint(0, 256, (3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    chw = viz.to_display(rgb_u8)
    assert chw.shape == (8, 6, 3) and chw.dtype == np.float32
    np.testing.assert_allclose(chw, rgb_u8.permute(1, 2, 0).numpy() / 255.0)
    hwc = viz.to_display(rgb_u8.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(hwc, chw)
    grey = viz.to_display(torch.rand(1, 28, 28))
    assert grey.shape == (28, 28)
    assert viz.to_display(np.zeros((5, 5))).shape == (5, 5)


def test_to_display_unnormalises_with_mean_std_and_rescales_otherwise():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    original = torch.rand(3, 4, 4)
    normalised = (original - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    back = viz.to_display(normalised, mean=mean, std=std)
    np.testing.assert_allclose(back, original.permute(1, 2, 0).numpy(), atol=1e-6)
    rescaled = viz.to_display(normalised)
    assert rescaled.min() == pytest.approx(0.0) and rescaled.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both mean and std"):
        viz.to_display(normalised, mean=mean)
    with pytest.raises(ValueError, match="one per channel"):
        viz.to_display(normalised, mean=(0.1, 0.2), std=(1.0, 1.0))


@pytest.mark.parametrize("shape", [(4,), (2, 3, 8, 8), (5, 8, 8), (8, 8, 5)])
def test_to_display_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(C, H, W\), \(H, W, C\) or \(H, W\)"):
        viz.to_display(torch.zeros(shape))


def test_image_grid_titles_and_layout():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    fig = viz.image_grid(images, torch.arange(10) % 3, class_names=["cat", "dog", "ship"], ncols=4)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 12  # 3 rows of 4; the last two are blank
    assert [ax.get_title() for ax in axes[:4]] == ["cat", "dog", "ship", "cat"]
    assert len(axes[0].images) == 1 and len(axes[11].images) == 0
    # channels-last batches, grey batches and lists work too
    viz.image_grid(images.permute(0, 2, 3, 1).numpy(), titles=[str(i) for i in range(10)])
    fig = viz.image_grid(torch.rand(4, 1, 28, 28), [1, 2, 3, 4])
    assert fig.axes[0].get_title() == "1"
    viz.image_grid([torch.rand(3, 8, 8), torch.rand(3, 16, 16)])
    fig = viz.image_grid(images[:2], [0, 1], class_names=["cat", "dog", "ship"], titles=["first", "second"])
    assert [ax.get_title() for ax in fig.axes] == ["first", "second"]  # titles win over class names


def test_image_grid_errors():
    with pytest.raises(ValueError, match=r"images\[None\]"):
        viz.image_grid(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="4 labels"):
        viz.image_grid(torch.rand(3, 3, 8, 8), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="has no name"):
        viz.image_grid(torch.rand(2, 3, 8, 8), [0, 5], class_names=["a", "b"])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        viz.image_grid(torch.rand(2, 5, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        viz.image_grid([])


def test_patch_grid_numbers_and_highlight():
    image = torch.rand(3, 32, 32)
    fig = viz.patch_grid(image, 8, highlight=5)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == [str(i) for i in range(16)]
    assert len(ax.patches) == 1  # the highlight rectangle
    assert len(ax.lines) == 6  # 3 horizontal + 3 vertical lines
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide the image height 32; choose one of \[1, 2, 4, 8, 16, 32\]"):
        viz.patch_grid(image, 5)
    with pytest.raises(ValueError, match="16 patches"):
        viz.patch_grid(image, 8, highlight=16)


def test_pixel_grid_two_panels():
    fig = viz.pixel_grid(torch.rand(1, 28, 28), 14, 7, patch_index=3)
    left, right = fig.axes
    assert right.get_title() == "4 pixels of 7×7"
    assert [t.get_text() for t in right.texts] == ["0", "1", "2", "3"]
    assert right.images[0].get_array().shape == (14, 14)
    with pytest.raises(ValueError, match="pixel_size=3 does not divide the patch_size 8"):
        viz.pixel_grid(torch.rand(3, 32, 32), 8, 3)
    with pytest.raises(ValueError, match="patch_index=4"):
        viz.pixel_grid(torch.rand(1, 28, 28), 14, 7, patch_index=4)


def test_attention_heatmap_one_and_many_heads():
    weights = torch.rand(4, 4).softmax(-1)
    fig = viz.attention_heatmap(weights, labels=list("abcd"), annotate=True)
    assert len(fig.axes) == 2  # map + colour bar
    assert len(fig.axes[0].texts) == 16
    fig = viz.attention_heatmap(torch.rand(3, 5, 7))
    assert [ax.get_title() for ax in fig.axes[:3]] == ["head 0", "head 1", "head 2"]
    with pytest.raises(ValueError, match=r"Select one batch element"):
        viz.attention_heatmap(torch.rand(2, 3, 5, 5))
    with pytest.raises(ValueError, match="3 labels"):
        viz.attention_heatmap(weights, labels=list("abc"))


def test_attention_on_image_blends_a_square_map():
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8)
    attention = torch.zeros(16)
    attention[5] = 1.0
    fig = viz.attention_on_image(image, attention)
    overlay = fig.axes[2].images[0].get_array()  # image, map, overlay, then the colour bar
    assert overlay.shape == (32, 32, 3)
    # patch 5 (row 1, column 1) gets the hot colour, patch 0 does not
    assert not np.allclose(overlay[8:16, 8:16], overlay[0:8, 0:8])
    viz.attention_on_image(torch.rand(1, 28, 28), torch.rand(2, 2), smooth=True)
    with pytest.raises(ValueError, match=r"attention\[1:-1\]"):
        viz.attention_on_image(image, torch.rand(18))
    with pytest.raises(ValueError, match="does not tile"):
        viz.attention_on_image(image, torch.rand(3, 3))


def test_attention_on_image_fixed_scale_keeps_near_uniform_maps_dark():
    image = torch.full((32, 32, 3), 128, dtype=torch.uint8)        # flat grey: only the map differs
    attention = torch.full((16,), 0.055)
    attention[5] = 0.059                                  # an untrained model's "peak"
    auto = viz.attention_on_image(image, attention)
    fixed = viz.attention_on_image(image, attention, vmin=0.0, vmax=1.0)
    assert auto.axes[1].images[0].get_clim() == pytest.approx((0.055, 0.059))
    assert fixed.axes[1].images[0].get_clim() == (0.0, 1.0)
    auto_overlay, fixed_overlay = (f.axes[2].images[0].get_array() for f in (auto, fixed))
    # auto-scaled, patch 5 stands out; on the 0-1 scale it looks like its neighbours
    assert np.abs(auto_overlay[8:16, 8:16] - auto_overlay[0:8, 0:8]).max() > 0.2
    assert np.abs(fixed_overlay[8:16, 8:16] - fixed_overlay[0:8, 0:8]).max() < 0.02
    with pytest.raises(ValueError, match="vmin < vmax"):
        viz.attention_on_image(image, attention, vmin=0.5, vmax=0.5)


def test_position_similarity_grid_and_diagonal():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 16 + 1, 32, generator=g)
    fig = viz.position_similarity(pos, num_prefix=1, num_suffix=1)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 16
    first = maps[0].images[0].get_array()
    assert first.shape == (4, 4) and first[0, 0] == pytest.approx(1.0, abs=1e-5)  # each embedding matches itself
    with pytest.raises(ValueError, match="num_prefix=1 and num_suffix=1"):
        viz.position_similarity(pos)
    with pytest.raises(ValueError, match=r"\(N, D\) or \(1, N, D\)"):
        viz.position_similarity(torch.rand(2, 16, 8))
