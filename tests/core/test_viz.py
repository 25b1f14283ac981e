"""Pictures: pasting visible patches, reconstruction grids and loss curves as PNG."""
import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.core.errors import ConfigError, DataError
from mimkit.core.viz import COLUMNS, PANEL_WIDTH_PX, TITLE_PX, loss_curve, paste_visible, reconstruction_grid


def random_mask(batch, tokens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, tokens, generator=generator) < 0.75).float()


@pytest.mark.parametrize("shape, patch", [((2, 3, 16, 32), 8), ((2, 1, 8, 16, 16), (4, 8, 8))])
def test_paste_visible_keeps_visible_and_takes_masked(shape, patch):
    images, recon = torch.randn(shape), torch.randn(shape)
    patch = (patch,) * (len(shape) - 2) if isinstance(patch, int) else patch
    grid = [s // p for s, p in zip(shape[2:], patch)]
    mask = random_mask(shape[0], int(np.prod(grid)))
    pasted = paste_visible(images, recon, mask, patch)
    # token index of every pixel, row-major over the grid as patchify orders tokens
    axes = [torch.arange(s) // p for s, p in zip(shape[2:], patch)]
    index = torch.zeros(shape[2:], dtype=torch.long)
    for axis, (coords, g) in enumerate(zip(axes, grid)):
        index = index * g + coords.view([-1 if i == axis else 1 for i in range(len(grid))])
    masked_pixels = mask[:, index.flatten()].view(shape[0], 1, *shape[2:]).bool().expand(shape)
    assert torch.equal(pasted[~masked_pixels], images[~masked_pixels])
    assert torch.equal(pasted[masked_pixels], recon[masked_pixels])
    assert 0 < masked_pixels.float().mean() < 1


def test_paste_visible_rejects_a_wrong_mask():
    with pytest.raises(DataError, match="mask"):
        paste_visible(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 9), 8)


def test_reconstruction_grid_size_and_grey_masked_patches(tmp_path):
    images = torch.rand(3, 1, 16, 32) * 10 + 5  # scaled for display per image
    recon = torch.rand(3, 1, 16, 32)
    mask = torch.zeros(3, 8)
    mask[:, 0] = 1  # the top-left 8x8 patch is masked, the rest visible
    path = reconstruction_grid(images, mask, recon, 8, tmp_path / "out" / "grid.png")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    panel_h = PANEL_WIDTH_PX // 2  # the images are twice as wide as tall
    assert picture.shape[:2] == (TITLE_PX + 3 * panel_h, len(COLUMNS) * PANEL_WIDTH_PX)
    scale = PANEL_WIDTH_PX // 32  # screen pixels per image pixel
    for row in range(3):
        top = TITLE_PX + row * panel_h
        masked_centre = picture[top + 4 * scale, PANEL_WIDTH_PX + 4 * scale]  # masked column, patch 0
        assert np.abs(masked_centre - 128).max() <= 2  # grey
        visible = picture[top + 4 * scale, PANEL_WIDTH_PX + 12 * scale]   # patch 1, visible: unchanged
        original = picture[top + 4 * scale, 12 * scale]
        assert np.array_equal(visible, original)


def test_reconstruction_grid_channels_and_volumes(tmp_path):
    rgb = reconstruction_grid(torch.rand(2, 3, 32, 32), torch.zeros(2, 16), torch.rand(2, 3, 32, 32), 8,
                              tmp_path / "rgb.png")
    colours = np.asarray(Image.open(rgb).convert("RGB")).astype(int)
    assert np.abs(colours[..., 0] - colours[..., 1]).max() > 50  # RGB shown in colour, not grey
    five = reconstruction_grid(torch.rand(2, 5, 32, 32), torch.ones(2, 16), torch.rand(2, 5, 32, 32), 8,
                               tmp_path / "five.png", channels=(4, 2, 0))
    assert Image.open(five).size == (len(COLUMNS) * PANEL_WIDTH_PX, TITLE_PX + 2 * PANEL_WIDTH_PX)
    volume = reconstruction_grid(torch.rand(10, 1, 8, 16, 16), torch.ones(10, 4), torch.rand(10, 1, 8, 16, 16),
                                 8, tmp_path / "volume.png", max_images=4)
    assert Image.open(volume).size == (len(COLUMNS) * PANEL_WIDTH_PX, TITLE_PX + 4 * PANEL_WIDTH_PX)
    with pytest.raises(ConfigError, match="channels"):
        reconstruction_grid(torch.rand(1, 5, 32, 32), torch.ones(1, 16), torch.rand(1, 5, 32, 32), 8,
                            tmp_path / "bad.png", channels=(7, 0, 1))


@pytest.mark.parametrize("form", ["records", "columns"])
def test_loss_curve_writes_png(tmp_path, form):
    steps = list(range(0, 100, 10))
    if form == "records":
        history = [{"step": s, "loss": torch.tensor(1.0 / (s + 1)), "parts": {"reconstruction": 0.5 / (s + 1)}}
                   for s in steps]
    else:
        history = {"step": steps, "loss": [1.0 / (s + 1) for s in steps], "alignment": [0.1] * len(steps)}
    path = loss_curve(history, tmp_path / "loss.png")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[:2] == (500, 800)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 10  # lines and text, not a blank canvas
    with pytest.raises(ConfigError, match="empty"):
        loss_curve([], tmp_path / "empty.png")
