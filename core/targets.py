"""What a method reconstructs: (normalised) pixels, image gradients, and the masked losses over them."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .tokens import as_tuple, patchify, unpatchify


class PixelTarget:
    """Patch pixels, optionally normalised by each patch's mean and variance (MAE's `norm_pix_loss`)."""

    def __init__(self, patch_size: int | Sequence[int], normalize: bool = True, eps: float = 1e-6):
        self.patch_size, self.normalize, self.eps = patch_size, normalize, eps

    def __call__(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *spatial) -> (B, N, patch_pixels * C); with `ids` (B, R) only those tokens, (B, R, ...)."""
        target = patchify(images, self.patch_size).float()
        if ids is not None:  # normalise only the tokens a method reconstructs
            target = torch.gather(target, 1, ids.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        if self.normalize:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True)
            target = (target - mean) / (var + self.eps) ** 0.5
        return target

    def to_pixels(self, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Predictions back to images; with normalisation, undo it with each patch's own statistics."""
        pred = pred.float()
        if self.normalize:
            patches = patchify(images, self.patch_size).float()
            pred = pred * (patches.var(-1, keepdim=True) + self.eps) ** 0.5 + patches.mean(-1, keepdim=True)
        dims = images.ndim - 2
        patch = (self.patch_size,) * dims if isinstance(self.patch_size, int) else tuple(self.patch_size)
        grid = tuple(s // p for s, p in zip(images.shape[2:], patch))
        return unpatchify(pred, patch, grid, images.shape[1])


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a per-token loss (B, N) over the tokens where `mask` is 1."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """MAE's loss: per-token MSE averaged over masked tokens only.

    `valid` (B, N, values), 1 where a predicted value is real data (see `valid_values`): nodata pixels do not
    count, and a token without any valid pixel drops out of the average."""
    error = (pred.float() - target) ** 2
    if valid is None:
        return masked_mean(error.mean(-1), mask)
    valid = valid.to(error)
    count = valid.sum(-1)
    per_token = (error * valid).sum(-1) / count.clamp_min(1.0)
    return masked_mean(per_token, mask * (count > 0).to(mask))


def valid_values(batch: dict, images: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor | None:
    """The batch's nodata mask ("valid", (B, H, W) or (B, 1, H, W), True = data) in the layout of
    `patchify(images)`: (B, N, values); None when the batch has none or every pixel is valid."""
    valid = batch.get("valid")
    if valid is None or bool(valid.all()):
        return None
    valid = valid.reshape(images.shape[0], 1, *images.shape[2:]).to(images.device)
    return patchify(valid.expand(-1, images.shape[1], *images.shape[2:]).float(), patch_size)


def sobel_gradient(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of every channel of 2D (B, C, H, W) or 3D (B, C, D, H, W) images, same shape.

    Each axis' derivative is a central difference smoothed by (1, 2, 1) along the other axes, scaled so that
    a unit ramp has gradient 1; borders are replicated.
    """
    dims = images.ndim - 2
    if dims not in (2, 3):
        raise DataError(f"sobel_gradient expects (B, C, H, W) or (B, C, D, H, W) images, got shape {tuple(images.shape)}")
    x = images.float()
    batch, channels, *spatial = x.shape
    x = x.reshape(batch * channels, 1, *spatial)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device) / 4.0
    diff = torch.tensor([-1.0, 0.0, 1.0], device=x.device) / 2.0
    kernels = []
    for axis in range(dims):
        kernel = torch.ones((1,) * dims, device=x.device)
        for other in range(dims):
            shape = [1] * dims
            shape[other] = 3
            kernel = kernel * (diff if other == axis else smooth).reshape(shape)
        kernels.append(kernel)
    weight = torch.stack(kernels).unsqueeze(1)                     # (dims, 1, 3, 3[, 3])
    padded = F.pad(x, (1, 1) * dims, mode="replicate")
    conv = F.conv2d if dims == 2 else F.conv3d
    grads = conv(padded, weight)                                    # (B*C, dims, *spatial)
    return grads.pow(2).sum(1).sqrt().reshape(batch, channels, *spatial)


class GradientTarget:
    """Patches of the images' Sobel gradient magnitude (Uni4Eye's second target), optionally per-patch normalised."""

    def __init__(self, patch_size: int | Sequence[int], normalize: bool = False, eps: float = 1e-6):
        self.pixels = PixelTarget(patch_size, normalize=normalize, eps=eps)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, N, patch_pixels * C)."""
        return self.pixels(sobel_gradient(images))


class HOGTarget:
    """Histograms of oriented gradients of each patch: MaskFeat's target, DMJD's default.

    Per channel: central-difference gradients (zero on the border row / column), unsigned orientations in
    [0, 180) degrees hard-assigned to `orientations` equal bins, gradient magnitude summed per bin over each
    `cell_size` x `cell_size` cell and divided by the cell's pixel count (as scikit-image's `hog` and DMJD's
    reference code). Each cell histogram is then normalised over its bins: 'standardize' (zero mean, unit
    variance: DMJD's reference code), 'l2' (scikit-image's L2 block norm with one-cell blocks) or 'none'.
    A token's target is its cells' histograms, (cells per patch) x channels x orientations values.
    """

    NORMALIZATIONS = ("standardize", "l2", "none")

    def __init__(self, patch_size: int | Sequence[int], orientations: int = 9, cell_size: int = 8,
                 normalize: str = "standardize", eps: float = 1e-5):
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        if normalize not in self.NORMALIZATIONS:
            raise ConfigError(f"HOG normalize must be one of {', '.join(self.NORMALIZATIONS)}, got {normalize!r}")
        if orientations < 1 or cell_size < 1:
            raise ConfigError(f"HOG needs orientations >= 1 and cell_size >= 1, got {orientations} and {cell_size}")
        if any(p % cell_size for p in self.patch_size):
            raise ConfigError(f"HOG cell_size {cell_size} must divide the patch size {self.patch_size}")
        self.orientations, self.cell_size, self.normalize, self.eps = orientations, cell_size, normalize, eps

    def dim(self, in_chans: int) -> int:
        """Length of one token's target."""
        cells = (self.patch_size[0] // self.cell_size) * (self.patch_size[1] // self.cell_size)
        return cells * in_chans * self.orientations

    def cell_histograms(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unnormalised histograms (B, C, H // cell, W // cell, orientations)."""
        if images.ndim != 4:
            raise ConfigError(f"HOG targets are defined for 2D images (B, C, H, W), got shape {tuple(images.shape)}")
        x = images.double() if images.dtype == torch.float64 else images.float()
        g_row, g_col = torch.zeros_like(x), torch.zeros_like(x)
        g_row[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
        g_col[:, :, :, 1:-1] = x[:, :, :, 2:] - x[:, :, :, :-2]
        magnitude = torch.hypot(g_row, g_col)
        # bins computed in place (the image-sized temporaries, not the arithmetic, cost the time)
        bins = torch.atan2(g_row, g_col, out=g_row).rad2deg_().remainder_(180)
        bins = bins.div_(180.0 / self.orientations, rounding_mode="floor").clamp_(0, self.orientations - 1)
        batch, chans, height, width = x.shape
        c = self.cell_size
        rows, cols = height // c, width // c
        magnitude = magnitude[:, :, :rows * c, :cols * c]
        bins = bins[:, :, :rows * c, :cols * c]
        # one pass: each pixel adds its magnitude to bin (cell, orientation) of its cell's histogram; the
        # index is summed in floating point, exact for the < 2^24 bins of one image channel
        cell = ((torch.arange(rows * c, device=x.device) // c)[:, None] * cols
                + (torch.arange(cols * c, device=x.device) // c)[None, :]) * self.orientations
        index = (bins + cell.to(bins.dtype)).long().reshape(batch * chans, -1)
        hist = x.new_zeros(batch * chans, rows * cols * self.orientations)
        hist.scatter_add_(1, index, magnitude.reshape(batch * chans, -1))
        return hist.reshape(batch, chans, rows, cols, self.orientations) / (c * c)

    def normalized_cells(self, images: torch.Tensor) -> torch.Tensor:
        """Cell histograms normalised over their bins, (B, C, H // cell, W // cell, orientations)."""
        hist = self.cell_histograms(images)
        if self.normalize == "l2":
            return hist / torch.sqrt((hist ** 2).sum(-1, keepdim=True) + self.eps ** 2)
        if self.normalize == "standardize":
            mean = hist.mean(-1, keepdim=True)
            var = hist.var(-1, keepdim=True, unbiased=False)
            return (hist - mean) / torch.sqrt(var + self.eps)
        return hist

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, cells per patch * C * orientations), tokens in patchify order."""
        cells = self.normalized_cells(images).float()
        batch, chans, rows, cols, bins = cells.shape
        per_h, per_w = self.patch_size[0] // self.cell_size, self.patch_size[1] // self.cell_size
        if rows % per_h or cols % per_w:
            raise ConfigError(f"image size {tuple(images.shape[2:])} is not divisible by the patch size {self.patch_size}")
        x = cells.reshape(batch, chans, rows // per_h, per_h, cols // per_w, per_w, bins)
        x = x.permute(0, 2, 4, 3, 5, 1, 6)  # (B, grid_h, grid_w, cell_h, cell_w, C, bins)
        return x.reshape(batch, (rows // per_h) * (cols // per_w), per_h * per_w * chans * bins)


@torch.no_grad()
def patch_hog_scores(images: torch.Tensor, patch_size: int | Sequence[int], orientations: int = 9,
                     cells_per_side: int = 2) -> torch.Tensor:
    """Per-patch HOG energy of 2D images, standardised over each image's patches: (B, N), higher = richer.

    SelectiveMAE's semantic-richness score (Wang et al., ICCV 2025): the `HOGTarget` cell histograms
    (`cells_per_side` x `cells_per_side` cells per patch, as the official 8-pixel cells in 16-pixel patches);
    a cell's energy is the L2 norm of its histogram, a patch's score the mean over its cells and channels.
    (The official code standardises each patch's HOG vector and then averages it, which leaves a constant
    score; the histogram norm keeps the intended ranking: edges and texture high, flat areas low.)
    """
    ph, pw = as_tuple(patch_size, 2, "patch_size")
    if ph % cells_per_side or pw % cells_per_side:
        cells_per_side = 1
    if ph // cells_per_side != pw // cells_per_side:
        raise ConfigError(f"patch_hog_scores needs square cells; patch size {(ph, pw)} gives none")
    hog = HOGTarget((ph, pw), orientations=orientations, cell_size=ph // cells_per_side, normalize="none")
    energy = hog.cell_histograms(images).float().norm(dim=-1)                  # (B, C, H / cell, W / cell)
    batch, chans, rows, cols = energy.shape
    per_patch = energy.reshape(batch, chans, rows // cells_per_side, cells_per_side, cols // cells_per_side,
                               cells_per_side)
    scores = per_patch.mean((1, 3, 5)).flatten(1)                                   # (B, N)
    return (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
