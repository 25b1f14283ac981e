"""What a method reconstructs: (normalised) pixels, and the masked losses over them."""
from __future__ import annotations

from typing import Sequence

import torch

from .tokens import patchify, unpatchify


class PixelTarget:
    """Patch pixels, optionally normalised by each patch's mean and variance (MAE's `norm_pix_loss`)."""

    def __init__(self, patch_size: int | Sequence[int], normalize: bool = True, eps: float = 1e-6):
        self.patch_size, self.normalize, self.eps = patch_size, normalize, eps

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, N, patch_pixels * C)."""
        target = patchify(images, self.patch_size).float()
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


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss: per-token MSE averaged over masked tokens only."""
    return masked_mean(((pred.float() - target) ** 2).mean(-1), mask)
