"""What a method reconstructs: (normalised) pixels, image gradients, and the masked losses over them."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import DataError
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
