"""Pictures: reconstruction grids and loss curves, written as PNG with matplotlib's Agg renderer."""
from __future__ import annotations

import math
from numbers import Number
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConfigError, DataError
from .tokens import as_tuple, grid_shape, unpatchify

DPI = 100
PANEL_WIDTH_PX = 160   # each panel of a reconstruction grid; its height follows the image's aspect
TITLE_PX = 24          # the strip of column titles above the grid
COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")
NOT_LOSSES = ("step", "parts", "lr", "learning_rate", "epoch", "seconds")  # history fields that are not losses


def pixel_mask(mask: torch.Tensor, patch_size: int | Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Token mask (B, N), 1 = masked -> pixel mask (B, 1, *spatial) of booleans."""
    patch = as_tuple(patch_size, len(spatial), "patch_size")
    grid = grid_shape(spatial, patch)
    if mask.ndim != 2 or mask.shape[1] != math.prod(grid):
        raise DataError(f"mask of shape {tuple(mask.shape)} does not fit images of size {tuple(spatial)} with "
                        f"patch size {patch}: expected (B, {math.prod(grid)})")
    tokens = mask.bool()[..., None].expand(-1, -1, math.prod(patch))
    return unpatchify(tokens, patch, grid, 1)


def paste_visible(images: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor,
                  patch_size: int | Sequence[int]) -> torch.Tensor:
    """Visible patches from `images`, masked patches from `recon` (both (B, C, *spatial)); mask (B, N), 1 = masked."""
    if images.shape != recon.shape:
        raise DataError(f"images {tuple(images.shape)} and reconstruction {tuple(recon.shape)} differ in shape")
    masked = pixel_mask(mask.to(images.device), patch_size, images.shape[2:])
    return torch.where(masked, recon.to(images.dtype), images)


def _display_channels(num_channels: int, channels: Sequence[int] | None) -> list[int]:
    if channels is None:
        return [0, 1, 2] if num_channels == 3 else [0]
    channels = list(channels)
    if len(channels) not in (1, 3) or not all(0 <= c < num_channels for c in channels):
        raise ConfigError(f"channels must be 1 or 3 indices below {num_channels}, got {channels}")
    return channels


def reconstruction_grid(images: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor,
                        patch_size: int | Sequence[int], path: str | Path,
                        channels: Sequence[int] | None = None, max_images: int = 8) -> Path:
    """PNG with one row per image: original, masked, reconstruction, reconstruction pasted into the visible patches.

    Images are (B, C, H, W), or (B, C, D, H, W) volumes shown by their middle slice. One channel shows grey,
    three show RGB, others show the first channel or the given `channels` triple. Each row is scaled by
    the original's 1st-99th percentiles.
    """
    images, recon = images.detach().float().cpu()[:max_images], recon.detach().float().cpu()[:max_images]
    mask = mask.detach().cpu()[:max_images]
    if images.ndim not in (4, 5):
        raise DataError(f"images must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(images.shape)}")
    pasted = paste_visible(images, recon, mask, patch_size)
    masked = pixel_mask(mask, patch_size, images.shape[2:])
    if images.ndim == 5:  # volumes: the middle slice along depth
        middle = images.shape[2] // 2
        images, recon, pasted, masked = (t[:, :, middle] for t in (images, recon, pasted, masked))
    keep = _display_channels(images.shape[1], channels)
    rows, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    panel_h = max(1, round(PANEL_WIDTH_PX * height / width))
    fig_w, fig_h = len(COLUMNS) * PANEL_WIDTH_PX, TITLE_PX + rows * panel_h
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    for col, title in enumerate(COLUMNS):
        fig.text((col + 0.5) / len(COLUMNS), 1 - TITLE_PX / 2 / fig_h, title, ha="center", va="center", fontsize=8)
    for row in range(rows):
        original = images[row, keep]
        low, high = torch.quantile(original.flatten(), torch.tensor([0.01, 0.99])).tolist()
        if high <= low:
            low, high = original.min().item(), original.max().item() + 1e-6

        def scaled(x: torch.Tensor) -> torch.Tensor:
            return ((x - low) / (high - low)).clamp(0, 1)

        grey = torch.where(masked[row], torch.full_like(original, 0.5), scaled(original))
        panels = (scaled(original), grey, scaled(recon[row, keep]), scaled(pasted[row, keep]))
        for col, panel in enumerate(panels):
            ax = fig.add_axes((col * PANEL_WIDTH_PX / fig_w, 1 - (TITLE_PX + (row + 1) * panel_h) / fig_h,
                               PANEL_WIDTH_PX / fig_w, panel_h / fig_h))
            picture = panel[0] if panel.shape[0] == 1 else panel.permute(1, 2, 0)
            ax.imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
            ax.set_axis_off()
    return _save(fig, path)


def _loss_series(history) -> dict[str, tuple[list[float], list[float]]]:
    """Normalise either history form to name -> (steps, values)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    if isinstance(history, dict):
        steps = [float(s) for s in history.get("step", [])]
        for name, values in history.items():
            if name not in NOT_LOSSES:
                values = [float(v) for v in values]
                series[name] = (steps if len(steps) == len(values) else list(range(len(values))), values)
        return series
    for index, record in enumerate(history):
        values = {k: v for k, v in record.items() if k not in NOT_LOSSES}
        values.update(record.get("parts", {}))
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, Number):
                xs, ys = series.setdefault(name, ([], []))
                xs.append(float(record.get("step", index)))
                ys.append(float(value))
    return series


def loss_curve(history: list[dict] | dict[str, list], path: str | Path) -> Path:
    """PNG of the total loss and each part against the step; log-scale y when every value is positive.

    `history` is a list of {"step", "loss", <part>: value, ...} (parts may also sit under "parts"), or a
    dict name -> list of values (an optional "step" list gives the x values).
    """
    series = _loss_series(history)
    if not any(values for _, values in series.values()):
        raise ConfigError("loss history is empty: nothing to plot")
    fig = Figure(figsize=(8, 5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (steps, values) in series.items():
        ax.plot(steps, values, label=name, linewidth=2.0 if name == "loss" else 1.2)
    finite = [v for _, values in series.values() for v in values if math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
